"""The SBOM member: CycloneDX 1.6 that the library's schema validator accepts, traced to
Debian packages, deterministic, and checked by verify against the manifest."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from mkimage.bundle.sbom import SBOM_MEMBER, DebPackage, validate_sbom
from mkimage.bundle.verify import verify_bundle
from mkimage.errors import VerifyError
from mkimage.initramfs.packages import owning_packages, usrmerge_twin
from mkimage.signing.trust import load_trust_store
from tests.bundle.evidence_helpers import KEYS, build, member
from tests.bundle.forge import Part, signing_key, standard_parts, write_signed
from tests.conftest import needs_tool


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, synthetic_kernel: Path) -> Path:
    root = tmp_path_factory.mktemp("sbom")
    out = root / "b.mkb"
    build(root / "recipe", synthetic_kernel, out, [signing_key()])
    return out


@pytest.fixture
def trust(tmp_path: Path) -> Path:
    (tmp_path / "trust").mkdir()
    shutil.copy(KEYS / "test-ed25519.pub.pem", tmp_path / "trust")
    return tmp_path / "trust"


def test_sbom_is_valid_cyclonedx_1_6(bundle: Path) -> None:
    data = member(bundle, SBOM_MEMBER)
    assert validate_sbom(data) is None
    doc = json.loads(data)
    assert doc["specVersion"] == "1.6" and doc["serialNumber"].startswith("urn:uuid:")
    assert doc["metadata"]["timestamp"].startswith("2023-11-14T22:13:20")


def test_a_broken_sbom_is_refused_by_the_validator(bundle: Path) -> None:
    doc = json.loads(member(bundle, SBOM_MEMBER))
    doc["components"][0]["hashes"] = [{"alg": "SHA-256", "content": "not hex"}]
    assert validate_sbom(json.dumps(doc).encode()) is not None
    doc = json.loads(member(bundle, SBOM_MEMBER))
    doc["version"] = "one"
    problem = validate_sbom(json.dumps(doc).encode())
    assert problem is not None and "version" in problem


def test_sbom_lists_kernel_files_and_the_debian_package_of_busybox(bundle: Path) -> None:
    needs_tool("dpkg-query")
    components = json.loads(member(bundle, SBOM_MEMBER))["components"]
    by_name = {c["name"]: c for c in components}
    kernel = by_name["linux"]
    assert kernel["type"] == "operating-system" and kernel["version"] == "9.8.7-synthetic"
    assert {p["name"] for p in kernel["properties"]} >= {"mkspawn:config-sha256", "mkspawn:member"}
    # The file given by path, with its digest, named relative to the recipe.
    assert by_name["motd"]["hashes"][0]["content"] == "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"
    busybox = next(c for c in components if c.get("purl", "").startswith("pkg:deb/debian/busybox"))
    assert "?arch=amd64" in busybox["purl"] and busybox["version"] in busybox["purl"].replace("%3A", ":").replace(
        "%2B", "+")
    files = [c for c in components if c["type"] == "file" and c["name"].endswith("busybox")]
    assert files and {"name": "mkspawn:debian-package", "value": busybox["name"]} in files[0]["properties"]


def test_purl_percent_encodes_the_epoch() -> None:
    package = DebPackage("busybox-static", "1:1.35.0-4+b3", "amd64")
    assert package.purl == "pkg:deb/debian/busybox-static@1%3A1.35.0-4%2Bb3?arch=amd64"


def test_usrmerge_paths_find_their_package() -> None:
    needs_tool("dpkg-query")
    assert usrmerge_twin("/usr/bin/busybox") == "/bin/busybox"
    assert usrmerge_twin("/bin/sh") == "/usr/bin/sh"
    assert usrmerge_twin("/etc/motd") is None
    found = owning_packages(["/usr/bin/busybox", "/bin/busybox", "/etc/no-such-file-here"])
    assert found["/usr/bin/busybox"] == found["/bin/busybox"]
    assert found["/usr/bin/busybox"].name.startswith("busybox")
    assert "/etc/no-such-file-here" not in found


def test_dpkg_query_runs_once_per_question_per_build(tmp_path: Path, synthetic_kernel: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    needs_tool("dpkg-query")
    with caplog.at_level(logging.DEBUG, logger="mkspawn"):
        build(tmp_path / "r", synthetic_kernel, tmp_path / "b.mkb")
    calls = [r.getMessage() for r in caplog.records if "dpkg-query" in r.getMessage() and r.getMessage()[:1] == "$"]
    assert [c.split()[2] for c in calls] == ["-S", "-W"], calls


def test_same_inputs_give_the_same_sbom_bytes(tmp_path: Path, synthetic_kernel: Path, bundle: Path) -> None:
    again = tmp_path / "again.mkb"
    build(tmp_path / "elsewhere" / "recipe", synthetic_kernel, again, [signing_key()])
    assert member(again, SBOM_MEMBER) == member(bundle, SBOM_MEMBER)
    assert again.read_bytes() == bundle.read_bytes()  # Ed25519 signatures are deterministic


def test_verify_reports_the_sbom(bundle: Path, trust: Path) -> None:
    report = verify_bundle(bundle, load_trust_store(trust, must_exist=True))
    assert report.evidence is not None and report.evidence.sbom is not None
    assert report.evidence.sbom.components >= 8


def _refusal(path: Path, trust: Path) -> VerifyError:
    with pytest.raises(VerifyError) as e:
        verify_bundle(path, load_trust_store(trust, must_exist=True))
    return e.value


def test_verify_refuses_a_bundle_without_an_sbom(tmp_path: Path, trust: Path) -> None:
    assert verify_bundle(write_signed(tmp_path / "b.mkb"), load_trust_store(trust, must_exist=True)).evidence
    parts: dict[str, Part] = standard_parts()
    error = _refusal(write_signed(tmp_path / "no-sbom.mkb", parts, evidence=False, with_provenance=True), trust)
    assert error.code == "missing-sbom" and SBOM_MEMBER in error.message


def test_verify_refuses_an_sbom_that_misstates_a_component(tmp_path: Path, trust: Path) -> None:
    from mkimage.artifacts import Role
    from mkimage.bundle.sbom import SBOM_MEDIA_TYPE
    from tests.bundle.forge import forged_sbom

    parts = standard_parts()
    stale = forged_sbom(parts)
    parts["cmdline"] = (parts["cmdline"][0], parts["cmdline"][1], b"console=ttyS1")
    parts[SBOM_MEMBER] = (Role.SBOM, SBOM_MEDIA_TYPE, stale)
    bundle = write_signed(tmp_path / "b.mkb", parts, evidence=False, with_provenance=True)
    error = _refusal(bundle, trust)
    assert error.code == "sbom-mismatch" and "sbom.cdx.json" in error.message and "'cmdline'" in error.message


def test_verify_refuses_a_bundle_whose_sbom_is_not_cyclonedx(tmp_path: Path, trust: Path) -> None:
    from mkimage.artifacts import Role
    from mkimage.bundle.sbom import SBOM_MEDIA_TYPE

    parts = standard_parts()
    parts[SBOM_MEMBER] = (Role.SBOM, SBOM_MEDIA_TYPE, b'{"bomFormat": "SPDX"}')
    error = _refusal(write_signed(tmp_path / "b.mkb", parts, evidence=False, with_provenance=True), trust)
    assert error.code == "bad-sbom" and SBOM_MEMBER in error.message
