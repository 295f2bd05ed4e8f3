"""push → pull through real registries and OCI layouts: byte-identical, deduplicated, verified."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import subprocess
import tarfile
import time
from pathlib import Path

from mkimage.registry.artifact import ARTIFACT_TYPE, CONFIG_MEDIA_TYPE, PROVENANCE_MEDIA_TYPE, TITLE
from tests.conftest import needs_tool
from tests.conftest import run_mkspawn as mkspawn
from tests.registry.conftest import Registry, free_port


def one_error_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def push(bundle: Path, ref: str, *args: object) -> dict[str, object]:
    done = mkspawn("push", bundle, ref, "--json", *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_push_pull_round_trip_is_byte_identical(tmp_path: Path, plain_registry: Registry,
                                                bundles: dict[str, Path], trust: Path) -> None:
    ref = f"{plain_registry.host}/spawns/demo:1.0.0"
    pushed = push(bundles["demo"], ref, "--insecure")
    out = tmp_path / "pulled.mkb"
    done = mkspawn("pull", ref, "-o", out, "--trust", trust, "--insecure", "--json")
    assert done.returncode == 0, done.stderr
    pulled = json.loads(done.stdout)
    assert pulled["digest"] == pushed["digest"]
    assert out.read_bytes() == bundles["demo"].read_bytes()
    assert subprocess.run(["cmp", bundles["demo"], out]).returncode == 0


def test_an_independent_client_reads_the_artifact(plain_registry: Registry, bundles: dict[str, Path]) -> None:
    """skopeo (containers/image) sees our manifest, its artifactType and titled layers."""
    needs_tool("skopeo")
    ref = f"{plain_registry.host}/spawns/skopeo:1"
    pushed = push(bundles["demo"], ref, "--insecure")
    done = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{ref}"],
                          capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256(done.stdout).hexdigest() == str(pushed["digest"]).removeprefix("sha256:")
    manifest = json.loads(done.stdout)
    assert manifest["artifactType"] == ARTIFACT_TYPE
    assert manifest["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    titles = [layer["annotations"][TITLE] for layer in manifest["layers"]]
    # One layer per bundle member after manifest.json (the config), in bundle order.
    with tarfile.open(bundles["demo"]) as tar:
        members = tar.getnames()
    assert members[0] == "manifest.json" and titles == members[1:]
    assert titles[0].startswith("signatures/") and {"bzImage", "cmdline", "initrd"} <= set(titles)
    media = {layer["annotations"][TITLE]: layer["mediaType"] for layer in manifest["layers"]}
    if "provenance.dsse.json" in media:
        assert media["provenance.dsse.json"] == PROVENANCE_MEDIA_TYPE


def test_second_push_sharing_the_kernel_uploads_no_kernel_bytes(plain_registry: Registry,
                                                                 bundles: dict[str, Path]) -> None:
    first = push(bundles["demo"], f"{plain_registry.host}/dedup/demo:1", "--insecure")
    assert all(b["status"] == "uploaded" for b in first["blobs"])  # type: ignore[union-attr,index]
    second = push(bundles["sibling"], f"{plain_registry.host}/dedup/demo:2", "--insecure")
    status = {b["title"]: b["status"] for b in second["blobs"]}  # type: ignore[union-attr,index]
    assert status["bzImage"] == "skipped" and status["initrd"] == "skipped"
    assert status["cmdline"] == "uploaded"
    assert int(second["uploaded_bytes"]) < 0.05 * int(first["uploaded_bytes"])  # type: ignore[call-overload]


def test_pull_by_digest(tmp_path: Path, plain_registry: Registry, bundles: dict[str, Path], trust: Path) -> None:
    pushed = push(bundles["sibling"], f"{plain_registry.host}/bydigest/demo:moving", "--insecure")
    push(bundles["demo"], f"{plain_registry.host}/bydigest/demo:moving", "--insecure")  # the tag moves on
    out = tmp_path / "pinned.mkb"
    done = mkspawn("pull", f"{plain_registry.host}/bydigest/demo@{pushed['digest']}", "-o", out,
                   "--trust", trust, "--insecure")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == bundles["sibling"].read_bytes()


def test_oci_layout_round_trip(tmp_path: Path, bundles: dict[str, Path], trust: Path) -> None:
    layout = tmp_path / "layout"
    first = push(bundles["demo"], f"oci:{layout}:demo")
    second = push(bundles["sibling"], f"oci:{layout}:sibling")
    assert {b["title"]: b["status"] for b in second["blobs"]}["bzImage"] == "skipped"  # type: ignore[union-attr,index]
    for tag, name in (("demo", "demo"), ("sibling", "sibling")):
        out = tmp_path / f"{tag}.mkb"
        done = mkspawn("pull", f"oci:{layout}:{tag}", "-o", out, "--trust", trust)
        assert done.returncode == 0, done.stderr
        assert out.read_bytes() == bundles[name].read_bytes()
    index = json.loads((layout / "index.json").read_text())
    # Besides the two tags: each bundle's referrers index (tests/registry/test_referrers.py).
    assert sorted(m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]
                  if not m["annotations"]["org.opencontainers.image.ref.name"].startswith("sha256-")) == [
        "demo", "sibling"]
    assert first["digest"] in {m["digest"] for m in index["manifests"]}
    if shutil.which("skopeo"):
        done = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:demo"], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["artifactType"] == ARTIFACT_TYPE


def test_unknown_tag_is_one_line_exit_2(tmp_path: Path, plain_registry: Registry, trust: Path) -> None:
    out = tmp_path / "x.mkb"
    line = one_error_line(mkspawn("pull", f"{plain_registry.host}/spawns/demo:no-such-tag", "-o", out,
                                  "--trust", trust, "--insecure"), 2)
    assert plain_registry.host in line and line.endswith("[unknown-reference]")
    assert not out.exists()
    line = one_error_line(mkspawn("pull", f"oci:{tmp_path}/nowhere:x", "-o", out, "--trust", trust), 2)
    assert line.endswith("[no-such-file]")


def test_registry_down_is_one_line_exit_1(tmp_path: Path, trust: Path, bundles: dict[str, Path]) -> None:
    port = free_port()  # nothing listens there
    out = tmp_path / "x.mkb"
    line = one_error_line(mkspawn("pull", f"127.0.0.1:{port}/spawns/demo:1", "-o", out, "--trust", trust,
                                  "--insecure"), 1)
    assert f"127.0.0.1:{port}: cannot connect: Connection refused" in line and line.endswith("[registry-unreachable]")
    assert not out.exists()
    line = one_error_line(mkspawn("push", bundles["demo"], f"127.0.0.1:{port}/spawns/demo:1", "--insecure"), 1)
    assert line.endswith("[registry-unreachable]")


def test_a_registry_that_never_answers_times_out(tmp_path: Path, trust: Path) -> None:
    """Connected (the kernel's backlog accepts) but never answered: --timeout is the time
    allowed between bytes, and it ends the pull with one line."""
    with socket.create_server(("127.0.0.1", 0)) as silent:
        host = f"127.0.0.1:{silent.getsockname()[1]}"
        out = tmp_path / "x.mkb"
        started = time.monotonic()
        line = one_error_line(mkspawn("pull", f"{host}/spawns/demo:1", "-o", out, "--trust", trust, "--insecure",
                                      "--timeout", "1"), 1)
        assert time.monotonic() - started < 30
    assert line == f"mkspawn: error: {host}: timed out (read timed out) [registry-timeout]"
    assert not out.exists()


def test_plain_http_only_for_loopback_unless_named(tmp_path: Path, trust: Path) -> None:
    out = tmp_path / "x.mkb"
    line = one_error_line(mkspawn("pull", "registry.example.com/spawns/demo:1", "-o", out, "--trust", trust,
                                  "--insecure"), 2)
    assert "--insecure-registry registry.example.com" in line and line.endswith("[insecure-refused]")
    # Named, it is allowed: the failure is then the network's (TEST-NET-1 is unroutable).
    done = mkspawn("pull", "192.0.2.1:5000/spawns/demo:1", "-o", out, "--trust", trust, "--insecure",
                   "--insecure-registry", "192.0.2.1", "--timeout", "1")
    line = one_error_line(done, 1)
    assert "[insecure-refused]" not in line and "192.0.2.1:5000" in line
    assert not out.exists()


def test_bad_references_are_usage_errors(tmp_path: Path, trust: Path, bundles: dict[str, Path]) -> None:
    for ref in ("demo.mkb", "build/demo.mkb", "localhost:5000/UPPER:1", "localhost:5000/x@sha256:12"):
        line = one_error_line(mkspawn("pull", ref, "-o", tmp_path / "x.mkb", "--trust", trust), 2)
        assert line.endswith("[bad-reference]"), line
    digest = "sha256:" + "0" * 64
    line = one_error_line(mkspawn("push", bundles["demo"], f"localhost:5000/x@{digest}"), 2)
    assert line.endswith("[bad-reference]")


def test_load_takes_a_reference(tmp_path: Path, plain_registry: Registry, bundles: dict[str, Path],
                                trust: Path) -> None:
    """load REF pulls into the cache and verifies before anything reaches the loader
    (an untrusted bundle is refused, so this never stages a kernel on the test machine)."""
    ref = f"{plain_registry.host}/load/demo:untrusted"
    push(bundles["untrusted"], ref, "--insecure")
    cache = tmp_path / "cache"
    line = one_error_line(mkspawn("load", ref, "--trust", trust, "--insecure",
                                  env={"XDG_CACHE_HOME": str(cache)}), 3)
    assert ref in line and line.endswith("[untrusted-key]")
    assert not list((cache / "mkspawn" / "pulled").glob("*.mkb"))
    line = one_error_line(mkspawn("load", f"{plain_registry.host}/load/demo:nothing", "--trust", trust,
                                  "--insecure", env={"XDG_CACHE_HOME": str(cache)}), 2)
    assert line.endswith("[unknown-reference]")
    line = one_error_line(mkspawn("load", tmp_path / "missing.mkb", "--trust", trust), 2)
    assert line.endswith("[no-such-file]")
