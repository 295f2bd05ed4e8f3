"""What a pull refuses, and how: one line, the documented exit code, and no output file."""

from __future__ import annotations

import hashlib
import json
import subprocess
import tarfile
from pathlib import Path

import pytest
import requests

from mkimage.bundle.container import MAX_SIGNATURES
from mkimage.registry.artifact import CONFIG_MEDIA_TYPE, TITLE
from tests.conftest import run_mkspawn as mkspawn
from tests.registry.conftest import PASSWORD, USER, Registry, docker_config, running_registry
from tests.registry.test_push_pull import one_error_line, push

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def pull(ref: str, out: Path, trust: Path, *args: object, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return mkspawn("pull", ref, "-o", out, "--trust", trust, *args, env=env)


def assert_nothing_written(out: Path) -> None:
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")] == []


# --- auth and TLS ----------------------------------------------------------------------


def test_basic_auth_over_tls_from_docker_config(tmp_path: Path, tls_registry: Registry,
                                                bundles: dict[str, Path], trust: Path) -> None:
    assert tls_registry.ca_cert is not None
    home = tmp_path / "home"
    docker_config(home / ".docker", tls_registry.host, USER, PASSWORD)
    ref = f"{tls_registry.host}/secure/demo:1"
    done = mkspawn("-v", "--debug", "push", bundles["demo"], ref, "--ca-cert", tls_registry.ca_cert,
                   env={"HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stderr + done.stdout
    out = tmp_path / "pulled.mkb"
    done = mkspawn("-v", "--debug", "pull", ref, "-o", out, "--trust", trust, "--ca-cert", tls_registry.ca_cert,
                   env={"HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert PASSWORD not in done.stderr + done.stdout
    assert out.read_bytes() == bundles["demo"].read_bytes()


def test_registry_auth_file_is_read(tmp_path: Path, tls_registry: Registry, bundles: dict[str, Path],
                                    trust: Path) -> None:
    assert tls_registry.ca_cert is not None
    auth_file = docker_config(tmp_path / "containers", tls_registry.host, USER, PASSWORD)
    env = {"HOME": str(tmp_path / "empty-home"), "REGISTRY_AUTH_FILE": str(auth_file)}
    ref = f"{tls_registry.host}/secure/authfile:1"
    done = mkspawn("push", bundles["demo"], ref, "--ca-cert", tls_registry.ca_cert, env=env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "pulled.mkb"
    done = pull(ref, out, trust, "--ca-cert", tls_registry.ca_cert, env=env)
    assert done.returncode == 0, done.stderr


def test_wrong_password_names_the_registry(tmp_path: Path, tls_registry: Registry, bundles: dict[str, Path],
                                           trust: Path) -> None:
    assert tls_registry.ca_cert is not None
    home = tmp_path / "home"
    docker_config(home / ".docker", tls_registry.host, USER, "wrong-password")
    out = tmp_path / "x.mkb"
    done = pull(f"{tls_registry.host}/secure/demo:1", out, trust, "--ca-cert", tls_registry.ca_cert,
                env={"HOME": str(home)})
    line = one_error_line(done, 1)
    assert line.startswith(f"mkspawn: error: {tls_registry.host}: access denied as '{USER}'")
    assert line.endswith("[registry-auth-failed]") and "wrong-password" not in line
    assert_nothing_written(out)
    # No credentials at all: the message says where they were looked for.
    done = mkspawn("push", bundles["demo"], f"{tls_registry.host}/secure/demo:2", "--ca-cert",
                   tls_registry.ca_cert, env={"HOME": str(tmp_path / "nobody")})
    line = one_error_line(done, 1)
    assert "requires credentials" in line and ".docker/config.json" in line
    assert line.endswith("[registry-auth-failed]")


def test_tls_is_verified(tmp_path: Path, tls_registry: Registry, trust: Path) -> None:
    home = tmp_path / "home"
    docker_config(home / ".docker", tls_registry.host, USER, PASSWORD)
    out = tmp_path / "x.mkb"
    line = one_error_line(pull(f"{tls_registry.host}/secure/demo:1", out, trust, env={"HOME": str(home)}), 1)
    assert line.startswith(f"mkspawn: error: {tls_registry.host}: TLS: ") and line.endswith("[registry-tls]")
    # --insecure means plain HTTP, which a TLS registry does not speak; it is never "skip verification".
    line = one_error_line(pull(f"{tls_registry.host}/secure/demo:1", out, trust, "--insecure",
                               env={"HOME": str(home)}), 1)
    assert "[registry-" in line
    assert_nothing_written(out)


# --- what the verification refuses ---------------------------------------------------------


def test_untrusted_signer_exit_3(tmp_path: Path, plain_registry: Registry, bundles: dict[str, Path],
                                 trust: Path) -> None:
    ref = f"{plain_registry.host}/refuse/untrusted:1"
    push(bundles["untrusted"], ref, "--insecure")
    out = tmp_path / "x.mkb"
    line = one_error_line(pull(ref, out, trust, "--insecure"), 3)
    assert line.endswith("[untrusted-key]") and ref in line
    assert_nothing_written(out)


def test_rollback_exit_5(tmp_path: Path, plain_registry: Registry, bundles: dict[str, Path], trust: Path) -> None:
    push(bundles["demo"], f"{plain_registry.host}/refuse/rollback:new", "--insecure")
    push(bundles["old"], f"{plain_registry.host}/refuse/rollback:old", "--insecure")
    state = tmp_path / "state.json"
    done = pull(f"{plain_registry.host}/refuse/rollback:new", tmp_path / "new.mkb", trust, "--insecure",
                "--state", state)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "old.mkb"
    line = one_error_line(pull(f"{plain_registry.host}/refuse/rollback:old", out, trust, "--insecure",
                               "--state", state), 5)
    assert line.endswith("[rollback]")
    assert_nothing_written(out)


@pytest.fixture
def scratch_registry(tmp_path: Path) -> Registry:
    """A registry of its own, for tests that damage its storage."""
    with running_registry(tmp_path / "scratch", tls=False) as registry:
        yield registry


def test_corrupted_blob_in_storage_is_caught(tmp_path: Path, scratch_registry: Registry,
                                             bundles: dict[str, Path], trust: Path) -> None:
    ref = f"{scratch_registry.host}/corrupt/demo:1"
    pushed = push(bundles["demo"], ref, "--insecure")
    kernel = next(b for b in pushed["blobs"] if b["title"] == "bzImage")  # type: ignore[union-attr,index]
    data = scratch_registry.blob_data(kernel["digest"])
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    data.write_bytes(bytes(damaged))
    out = tmp_path / "x.mkb"
    line = one_error_line(pull(ref, out, trust, "--insecure"), 3)
    assert "bzImage" in line and line.endswith("[digest-mismatch]")
    assert_nothing_written(out)


# --- crafted manifests -----------------------------------------------------------------


def get_manifest(registry: Registry, repo: str, tag: str) -> dict[str, object]:
    response = requests.get(f"http://{registry.host}/v2/{repo}/manifests/{tag}", timeout=30,
                            headers={"Accept": OCI_MANIFEST})
    response.raise_for_status()
    manifest: dict[str, object] = response.json()
    return manifest


def put_manifest(registry: Registry, repo: str, tag: str, manifest: dict[str, object] | bytes) -> None:
    body = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    response = requests.put(f"http://{registry.host}/v2/{repo}/manifests/{tag}", data=body, timeout=30,
                            headers={"Content-Type": OCI_MANIFEST})
    assert response.status_code == 201, response.text


def put_blob(registry: Registry, repo: str, data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = requests.post(f"http://{registry.host}/v2/{repo}/blobs/uploads/", timeout=30)
    location = requests.compat.urljoin(f"http://{registry.host}/", start.headers["Location"])
    done = requests.put(location, params={"digest": digest}, data=data, timeout=60,
                        headers={"Content-Type": "application/octet-stream"})
    assert done.status_code == 201, done.text
    return {"digest": digest, "size": len(data)}


def _drop_component(m: dict) -> None:  # type: ignore[type-arg]
    m["layers"] = [layer for layer in m["layers"] if layer["annotations"][TITLE] != "cmdline"]


def _extra_layer(m: dict) -> None:  # type: ignore[type-arg]
    m["layers"] = [*m["layers"], {**m["layers"][-1], "annotations": {TITLE: "extra"}}]


def _wrong_media_type(m: dict) -> None:  # type: ignore[type-arg]
    for layer in m["layers"]:
        if layer["annotations"][TITLE] == "bzImage":
            layer["mediaType"] = "application/octet-stream"


def _not_ours(m: dict) -> None:  # type: ignore[type-arg]
    m["artifactType"] = "application/vnd.example.other"


@pytest.mark.parametrize(("mutate", "code"), [
    (_drop_component, "missing-layer"),
    (_extra_layer, "extra-layer"),
    (_wrong_media_type, "layer-mismatch"),
    (_not_ours, "not-a-bundle"),
], ids=["missing-component", "extra-layer", "wrong-media-type", "other-artifact-type"])
def test_layers_must_match_the_config(tmp_path: Path, plain_registry: Registry, bundles: dict[str, Path],
                                      trust: Path, mutate: object, code: str) -> None:
    push(bundles["demo"], f"{plain_registry.host}/crafted/demo:good", "--insecure")
    manifest = get_manifest(plain_registry, "crafted/demo", "good")
    mutate(manifest)  # type: ignore[operator]
    put_manifest(plain_registry, "crafted/demo", code, manifest)
    out = tmp_path / "x.mkb"
    line = one_error_line(pull(f"{plain_registry.host}/crafted/demo:{code}", out, trust, "--insecure"), 3)
    assert line.endswith(f"[{code}]"), line
    assert_nothing_written(out)


def test_oversized_manifest_and_config_are_refused(tmp_path: Path, plain_registry: Registry,
                                                   bundles: dict[str, Path], trust: Path) -> None:
    push(bundles["demo"], f"{plain_registry.host}/caps/demo:good", "--insecure")
    manifest = get_manifest(plain_registry, "caps/demo", "good")
    out = tmp_path / "x.mkb"

    # distribution itself refuses manifests over 4 MiB (our cap too), so an OCI layout serves the big one.
    layout = tmp_path / "layout"
    push(bundles["demo"], f"oci:{layout}:good")
    index = json.loads((layout / "index.json").read_text())
    huge = json.dumps(dict(manifest, annotations={"padding": "x" * (5 << 20)})).encode()
    huge_digest = hashlib.sha256(huge).hexdigest()
    (layout / "blobs" / "sha256" / huge_digest).write_bytes(huge)
    index["manifests"].append({"mediaType": OCI_MANIFEST, "digest": f"sha256:{huge_digest}", "size": len(huge),
                               "annotations": {"org.opencontainers.image.ref.name": "huge"}})
    (layout / "index.json").write_text(json.dumps(index))
    line = one_error_line(pull(f"oci:{layout}:huge", out, trust), 3)
    assert "limit" in line and line.endswith("[blob-too-large]")

    big_config = put_blob(plain_registry, "caps/demo", b"{" + b" " * (2 << 20) + b"}")
    put_manifest(plain_registry, "caps/demo", "huge-config",
                 dict(manifest, config={"mediaType": CONFIG_MEDIA_TYPE, **big_config}))
    line = one_error_line(pull(f"{plain_registry.host}/caps/demo:huge-config", out, trust, "--insecure"), 3)
    assert "config blob" in line and line.endswith("[blob-too-large]")

    # A descriptor that understates its blob: the stream is cut at the stated size.
    config = dict(manifest["config"])  # type: ignore[call-overload]
    lying = dict(manifest, config={**config, "size": config["size"] - 10})
    put_manifest(plain_registry, "caps/demo", "lying-size", lying)
    line = one_error_line(pull(f"{plain_registry.host}/caps/demo:lying-size", out, trust, "--insecure"), 3)
    assert line.endswith("[blob-too-large]")
    assert_nothing_written(out)


def test_more_signature_layers_than_a_bundle_may_hold(tmp_path: Path, plain_registry: Registry,
                                                      bundles: dict[str, Path], trust: Path) -> None:
    push(bundles["demo"], f"{plain_registry.host}/crafted/many:good", "--insecure")
    manifest = get_manifest(plain_registry, "crafted/many", "good")
    layers = manifest["layers"]
    assert isinstance(layers, list)
    # Well-formed signature documents by made-up keys: each one passes the format checks.
    extra = []
    for i in range(MAX_SIGNATURES):
        keyid = f"f{i:063x}"
        blob = json.dumps({"_type": "mkspawn-signature", "keyid": keyid, "scheme": "ed25519", "sig": "00" * 64},
                          sort_keys=True, separators=(",", ":")).encode()
        extra.append({"mediaType": layers[0]["mediaType"], **put_blob(plain_registry, "crafted/many", blob),
                      "annotations": {TITLE: f"signatures/{keyid}.sig"}})
    put_manifest(plain_registry, "crafted/many", "many", dict(manifest, layers=[layers[0], *extra, *layers[1:]]))
    out = tmp_path / "x.mkb"
    line = one_error_line(pull(f"{plain_registry.host}/crafted/many:many", out, trust, "--insecure"), 3)
    assert line.endswith("[too-many-signatures]")
    assert_nothing_written(out)


# --- fail fast, and no weaker for it -------------------------------------------------------


def _damage(registry: Registry, digest: str) -> None:
    data = registry.blob_data(digest)
    damaged = bytearray(data.read_bytes())
    damaged[len(damaged) // 2] ^= 0x01
    data.write_bytes(bytes(damaged))


def test_untrusted_or_older_bundle_is_refused_before_any_component_is_fetched(
        tmp_path: Path, scratch_registry: Registry, bundles: dict[str, Path], trust: Path) -> None:
    """The signature, trust and rollback checks run on the config and signature blobs; a
    damaged kernel blob shows the components were never read."""
    untrusted = push(bundles["untrusted"], f"{scratch_registry.host}/fast/untrusted:1", "--insecure")
    kernel = next(b for b in untrusted["blobs"] if b["title"] == "bzImage")  # type: ignore[union-attr,index]
    _damage(scratch_registry, kernel["digest"])
    out = tmp_path / "x.mkb"
    done = mkspawn("-v", "pull", f"{scratch_registry.host}/fast/untrusted:1", "-o", out, "--trust", trust,
                   "--insecure")
    assert done.returncode == 3, done.stderr
    assert done.stderr.splitlines()[-1].endswith("[untrusted-key]")
    assert "bzImage" not in done.stderr
    assert_nothing_written(out)

    push(bundles["old"], f"{scratch_registry.host}/fast/old:1", "--insecure")  # shares the damaged kernel
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"_type": "mkspawn-rollback-state", "recipes": {"demo": "1.0.0"}}))
    done = mkspawn("-v", "pull", f"{scratch_registry.host}/fast/old:1", "-o", out, "--trust", trust, "--insecure",
                   "--state", state)
    assert done.returncode == 5, done.stderr
    assert done.stderr.splitlines()[-1].endswith("[rollback]")
    assert "bzImage" not in done.stderr
    assert_nothing_written(out)


def test_push_of_a_damaged_bundle_is_refused_by_the_digest_check(tmp_path: Path, scratch_registry: Registry,
                                                                 bundles: dict[str, Path]) -> None:
    """A push does not hash the bundle first; the registry's digest check (and the layout
    store's own) still refuses a component that differs from the manifest, and no
    manifest is written."""
    damaged = tmp_path / "damaged.mkb"
    data = bytearray(bundles["demo"].read_bytes())
    with tarfile.open(bundles["demo"]) as tar:
        kernel = tar.getmember("bzImage")
    data[kernel.offset_data + kernel.size // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    ref = f"{scratch_registry.host}/damaged/demo:1"
    line = one_error_line(mkspawn("push", damaged, ref, "--insecure"), 3)
    assert line.startswith(f"mkspawn: error: {damaged}: ") and "bzImage" in line
    assert line.endswith("[digest-mismatch]")
    response = requests.get(f"http://{scratch_registry.host}/v2/damaged/demo/manifests/1", timeout=30,
                            headers={"Accept": OCI_MANIFEST})
    assert response.status_code == 404
    layout = tmp_path / "layout"
    line = one_error_line(mkspawn("push", damaged, f"oci:{layout}:1"), 3)
    assert "bzImage" in line and line.endswith("[digest-mismatch]")
    assert not (layout / "index.json").exists()
