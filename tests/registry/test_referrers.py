"""The SBOM and the provenance pushed as OCI 1.1 referrers of the bundle's manifest, found
through the tag-schema fallback (Debian's distribution 2.8 has no referrers API)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import requests

from mkimage.registry.artifact import EMPTY_MEDIA_TYPE, INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE
from tests.conftest import missing
from tests.conftest import run_mkspawn as mkspawn
from tests.registry.conftest import Registry
from tests.registry.test_push_pull import one_error_line, push

SBOM_TYPE = "application/vnd.cyclonedx+json"
DSSE_TYPE = "application/vnd.dsse.envelope.v1+json"
MEMBERS = {SBOM_TYPE: "sbom.cdx.json", DSSE_TYPE: "provenance.dsse.json"}


def members(bundle: Path) -> dict[str, bytes]:
    with tarfile.open(bundle) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def get(registry: Registry, repo: str, kind: str, ref: str, accept: str = "") -> requests.Response:
    response = requests.get(f"http://{registry.host}/v2/{repo}/{kind}/{ref}", headers={"Accept": accept},
                            timeout=30)
    assert response.status_code == 200, (kind, ref, response.status_code, response.text)
    return response


def test_push_attaches_sbom_and_provenance_as_referrers(plain_registry: Registry, bundles: dict[str, Path]) -> None:
    repo = "referrers/demo"
    pushed = push(bundles["demo"], f"{plain_registry.host}/{repo}:1", "--insecure")
    subject = str(pushed["digest"])
    hex_digest = subject.removeprefix("sha256:")
    # The registry has no referrers API, which is why the fallback tag is needed at all.
    assert requests.get(f"http://{plain_registry.host}/v2/{repo}/referrers/{subject}", timeout=30).status_code == 404
    assert pushed["referrers_tag"] == f"sha256-{hex_digest}"

    index_response = get(plain_registry, repo, "manifests", f"sha256-{hex_digest}", INDEX_MEDIA_TYPE)
    assert index_response.headers["Content-Type"] == INDEX_MEDIA_TYPE
    index = index_response.json()
    assert index["mediaType"] == INDEX_MEDIA_TYPE
    listed = {m["artifactType"]: m for m in index["manifests"]}
    assert sorted(listed) == sorted(MEMBERS) and len(index["manifests"]) == 2

    bundle_members = members(bundles["demo"])
    for artifact_type, entry in listed.items():
        assert entry["mediaType"] == OCI_MANIFEST_MEDIA_TYPE
        raw = get(plain_registry, repo, "manifests", entry["digest"], OCI_MANIFEST_MEDIA_TYPE).content
        assert "sha256:" + hashlib.sha256(raw).hexdigest() == entry["digest"] and len(raw) == entry["size"]
        manifest = json.loads(raw)
        assert manifest["artifactType"] == artifact_type
        assert manifest["subject"] == {"mediaType": OCI_MANIFEST_MEDIA_TYPE, "digest": subject,
                                       "size": len(get(plain_registry, repo, "manifests", subject,
                                                       OCI_MANIFEST_MEDIA_TYPE).content)}
        assert manifest["config"]["mediaType"] == EMPTY_MEDIA_TYPE
        assert get(plain_registry, repo, "blobs", manifest["config"]["digest"]).content == b"{}"
        (layer,) = manifest["layers"]
        assert layer["mediaType"] == artifact_type
        blob = get(plain_registry, repo, "blobs", layer["digest"]).content
        assert blob == bundle_members[MEMBERS[artifact_type]]


def _upload(registry: Registry, repo: str, data: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    start = requests.post(f"http://{registry.host}/v2/{repo}/blobs/uploads/", timeout=30)
    assert start.status_code == 202, start.text
    location = start.headers["Location"]
    done = requests.put(location, params={"digest": digest}, data=data,
                        headers={"Content-Type": "application/octet-stream"}, timeout=30)
    assert done.status_code == 201, done.text
    return {"digest": digest, "size": len(data)}


def _put(registry: Registry, repo: str, reference: str, document: dict[str, object], media_type: str) -> bytes:
    raw = json.dumps(document).encode()
    response = requests.put(f"http://{registry.host}/v2/{repo}/manifests/{reference}", data=raw,
                            headers={"Content-Type": media_type}, timeout=30)
    assert response.status_code == 201, response.text
    return raw


def test_pushing_again_adds_nothing_and_keeps_another_tools_referrer(plain_registry: Registry,
                                                                    bundles: dict[str, Path]) -> None:
    repo = "referrers/merge"
    subject = str(push(bundles["demo"], f"{plain_registry.host}/referrers/scratch:1", "--insecure")["digest"])
    tag = "sha256-" + subject.removeprefix("sha256:")
    # Another tool (say a signer) attached its own referrer first and started the index.
    foreign_manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST_MEDIA_TYPE, "artifactType": "application/vnd.example.sig",
        "config": {"mediaType": EMPTY_MEDIA_TYPE, **_upload(plain_registry, repo, b"{}")},
        "layers": [{"mediaType": "application/vnd.example.sig", **_upload(plain_registry, repo, b"signature")}],
        "subject": {"mediaType": OCI_MANIFEST_MEDIA_TYPE, "digest": subject, "size": 1}}
    raw = json.dumps(foreign_manifest).encode()
    foreign = {"mediaType": OCI_MANIFEST_MEDIA_TYPE, "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
               "size": len(raw), "artifactType": "application/vnd.example.sig"}
    _put(plain_registry, repo, str(foreign["digest"]), foreign_manifest, OCI_MANIFEST_MEDIA_TYPE)
    _put(plain_registry, repo, tag, {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": [foreign]},
         INDEX_MEDIA_TYPE)

    url = f"http://{plain_registry.host}/v2/{repo}/manifests/{tag}"
    first = push(bundles["demo"], f"{plain_registry.host}/{repo}:1", "--insecure")
    assert first["digest"] == subject and first["referrers_tag"] == tag
    after_first = requests.get(url, headers={"Accept": INDEX_MEDIA_TYPE}, timeout=30).content
    listed = json.loads(after_first)["manifests"]
    assert listed[0] == foreign
    assert sorted(m["artifactType"] for m in listed[1:]) == sorted(MEMBERS)
    second = push(bundles["demo"], f"{plain_registry.host}/{repo}:again", "--insecure")
    assert second["referrers_tag"] == tag
    assert requests.get(url, headers={"Accept": INDEX_MEDIA_TYPE}, timeout=30).content == after_first


def test_something_else_under_the_referrers_tag_is_not_replaced(plain_registry: Registry,
                                                               bundles: dict[str, Path]) -> None:
    repo = "referrers/occupied"
    subject = str(push(bundles["demo"], f"{plain_registry.host}/{repo}:1", "--insecure")["digest"])
    tag = "sha256-" + subject.removeprefix("sha256:")
    # The bundle's own manifest retagged there: an image manifest, not an index.
    own = get(plain_registry, repo, "manifests", subject, OCI_MANIFEST_MEDIA_TYPE).content
    response = requests.put(f"http://{plain_registry.host}/v2/{repo}/manifests/{tag}", data=own,
                            headers={"Content-Type": OCI_MANIFEST_MEDIA_TYPE}, timeout=30)
    assert response.status_code == 201
    line = one_error_line(mkspawn("push", bundles["demo"], f"{plain_registry.host}/{repo}:1", "--insecure"), 1)
    assert tag in line and "not replacing it" in line and line.endswith("[registry-error]")
    assert get(plain_registry, repo, "manifests", tag, OCI_MANIFEST_MEDIA_TYPE).content == own


def test_an_independent_client_reads_a_referrer(plain_registry: Registry, bundles: dict[str, Path]) -> None:
    if shutil.which("skopeo") is None:
        missing("skopeo is not installed (Debian package skopeo)")
    repo = "referrers/skopeo"
    pushed = push(bundles["demo"], f"{plain_registry.host}/{repo}:1", "--insecure")
    for referrer in pushed["referrers"]:  # type: ignore[attr-defined]
        done = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false",
                               f"docker://{plain_registry.host}/{repo}@{referrer['digest']}"],
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        manifest = json.loads(done.stdout)
        assert manifest["artifactType"] == referrer["artifactType"]
        assert manifest["subject"]["digest"] == pushed["digest"]


def test_oci_layout_lists_referrers_under_the_fallback_tag(tmp_path: Path, bundles: dict[str, Path]) -> None:
    layout = tmp_path / "layout"
    pushed = push(bundles["demo"], f"oci:{layout}:demo")
    tag = "sha256-" + str(pushed["digest"]).removeprefix("sha256:")
    assert pushed["referrers_tag"] == tag
    push(bundles["demo"], f"oci:{layout}:demo")  # twice: still one index, two referrers

    def blob(digest: str) -> bytes:
        return (layout / "blobs" / "sha256" / digest.removeprefix("sha256:")).read_bytes()

    tagged = {m["annotations"]["org.opencontainers.image.ref.name"]: m
              for m in json.loads((layout / "index.json").read_text())["manifests"]}
    assert sorted(tagged) == sorted(["demo", tag])
    assert tagged[tag]["mediaType"] == INDEX_MEDIA_TYPE
    index = json.loads(blob(tagged[tag]["digest"]))
    assert sorted(m["artifactType"] for m in index["manifests"]) == sorted(MEMBERS)
    bundle_members = members(bundles["demo"])
    for entry in index["manifests"]:
        manifest = json.loads(blob(entry["digest"]))
        assert manifest["subject"]["digest"] == pushed["digest"]
        assert blob(manifest["layers"][0]["digest"]) == bundle_members[MEMBERS[entry["artifactType"]]]
    if shutil.which("skopeo") is not None:
        done = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{layout}:{tag}"], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == index
