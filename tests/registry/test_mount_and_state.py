"""Cross-repository mount on push, and the pulled manifest digest in the rollback state."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from mkimage.bundle.verify import STATE_TYPE
from tests.conftest import run_mkspawn as mkspawn
from tests.registry.conftest import PASSWORD, USER, Registry, docker_config
from tests.registry.test_push_pull import one_error_line, push
from tests.registry.test_refusals import assert_nothing_written, pull


def statuses(result: dict[str, object]) -> dict[str, dict[str, object]]:
    return {b["title"]: b for b in result["blobs"]}  # type: ignore[union-attr,index,misc]


# --- cross-repository mount ------------------------------------------------------------


def test_push_mounts_blobs_from_another_repository(tmp_path: Path, plain_registry: Registry,
                                                   bundles: dict[str, Path], trust: Path) -> None:
    """Promoting a release from one repository to another moves no kernel bytes."""
    host = plain_registry.host
    first = push(bundles["demo"], f"{host}/mount/staging:1", "--insecure")
    second = push(bundles["sibling"], f"{host}/mount/release:1", "--insecure", "--from", "mount/staging")
    blobs = statuses(second)
    assert blobs["bzImage"]["status"] == "mounted" and blobs["bzImage"]["from"] == "mount/staging"
    assert blobs["cmdline"]["status"] == "uploaded"  # only in the sibling: nothing to mount
    kernel_size = int(blobs["bzImage"]["size"])  # type: ignore[call-overload]
    assert int(second["uploaded_bytes"]) < 0.05 * int(first["uploaded_bytes"]) < kernel_size  # type: ignore[call-overload]
    # The blob is now the release repository's own: readable there, and the bundle pulls whole.
    head = requests.head(f"http://{host}/v2/mount/release/blobs/{blobs['bzImage']['digest']}", timeout=30)
    assert head.status_code == 200
    out = tmp_path / "release.mkb"
    done = pull(f"{host}/mount/release:1", out, trust, "--insecure")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == bundles["sibling"].read_bytes()


def test_mount_source_without_the_blob_falls_back_to_upload(plain_registry: Registry,
                                                            bundles: dict[str, Path]) -> None:
    host = plain_registry.host
    result = push(bundles["demo"], f"{host}/mount/fresh:1", "--insecure", "--from", "mount/empty-source",
                  "--from", f"{host}/mount/also-empty")
    assert {b["status"] for b in statuses(result).values()} == {"uploaded"}


def test_mount_over_tls_with_credentials(tmp_path: Path, tls_registry: Registry, bundles: dict[str, Path]) -> None:
    assert tls_registry.ca_cert is not None
    env = {"HOME": str(tmp_path / "home")}
    docker_config(tmp_path / "home" / ".docker", tls_registry.host, USER, PASSWORD)
    done = mkspawn("push", bundles["demo"], f"{tls_registry.host}/secure/mount-src:1", "--ca-cert",
                   tls_registry.ca_cert, env=env)
    assert done.returncode == 0, done.stderr
    done = mkspawn("push", bundles["sibling"], f"{tls_registry.host}/secure/mount-dst:1", "--json",
                   "--from", "secure/mount-src", "--ca-cert", tls_registry.ca_cert, env=env)
    assert done.returncode == 0, done.stderr
    assert statuses(json.loads(done.stdout))["bzImage"]["status"] == "mounted"


def test_from_must_name_a_repository_of_the_same_registry(tmp_path: Path, plain_registry: Registry,
                                                          bundles: dict[str, Path]) -> None:
    host = plain_registry.host
    for source in ("other.example.com/mount/x", f"{host}/mount/x:tag", "UPPER"):
        line = one_error_line(mkspawn("push", bundles["demo"], f"{host}/mount/y:1", "--insecure",
                                      "--from", source), 2)
        assert line.endswith("[bad-reference]"), line
    line = one_error_line(mkspawn("push", bundles["demo"], f"oci:{tmp_path / 'layout'}:1", "--from", "x"), 2)
    assert "OCI layout" in line and line.endswith("[bad-reference]")


# --- digests in the state file -----------------------------------------------------------


def test_pull_records_the_manifest_digest_in_the_state(tmp_path: Path, plain_registry: Registry,
                                                       bundles: dict[str, Path], trust: Path) -> None:
    ref = f"{plain_registry.host}/state/demo:1"
    pushed = push(bundles["demo"], ref, "--insecure")
    state = tmp_path / "state.json"
    # A state file from before digests were recorded: still read, and extended.
    state.write_text(json.dumps({"_type": STATE_TYPE, "recipes": {"demo": "0.9.0", "other": "2.0"}}))
    done = pull(ref, tmp_path / "demo.mkb", trust, "--insecure", "--state", state)
    assert done.returncode == 0, done.stderr
    recorded = json.loads(state.read_text())
    assert recorded["recipes"] == {"demo": "1.0.0", "other": "2.0"}
    assert recorded["pulled"] == {"demo": {"version": "1.0.0", "reference": ref, "digest": pushed["digest"]}}

    # The same version under another digest (re-signed, re-pushed) is recorded too.
    other = f"{plain_registry.host}/state/sibling:1"
    pushed_sibling = push(bundles["sibling"], other, "--insecure")
    done = pull(other, tmp_path / "sibling.mkb", trust, "--insecure", "--state", state)
    assert done.returncode == 0, done.stderr
    assert json.loads(state.read_text())["pulled"]["demo"]["digest"] == pushed_sibling["digest"]

    # `verify --state` reads and keeps the table.
    done = mkspawn("verify", tmp_path / "demo.mkb", "--trust", trust, "--state", state)
    assert done.returncode == 0, done.stderr
    assert json.loads(state.read_text())["pulled"]["demo"]["reference"] == other


def test_a_damaged_pulled_table_is_refused_before_fetching(tmp_path: Path, plain_registry: Registry,
                                                           bundles: dict[str, Path], trust: Path) -> None:
    ref = f"{plain_registry.host}/state/damaged:1"
    push(bundles["demo"], ref, "--insecure")
    state = tmp_path / "state.json"
    before = json.dumps({"_type": STATE_TYPE, "recipes": {}, "pulled": {"demo": {"version": "1.0.0"}}})
    state.write_text(before)
    out = tmp_path / "x.mkb"
    line = one_error_line(pull(ref, out, trust, "--insecure", "--state", state), 2)
    assert line.endswith("[bad-state]") and "pulled" in line
    assert state.read_text() == before
    assert_nothing_written(out)
