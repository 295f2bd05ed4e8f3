"""What a hostile bundle can make a verifier do: no work before the signature, bounded
signatures, and role rules a trusted signature does not waive."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from mkimage.bundle.container import MAX_SIGNATURE_BYTES, MAX_SIGNATURES
from mkimage.bundle.manifest import Role, Signature
from mkimage.bundle.sign import make_signature
from mkimage.bundle.tarball import write_archive
from mkimage.bundle.verify import verify_bundle
from mkimage.errors import ExitCode, VerifyError
from mkimage.signing.trust import TrustStore, load_trust_store
from tests.bundle.forge import (
    BZIMAGE,
    CPIO,
    EPOCH,
    KEYS,
    NEWC,
    Part,
    signing_key,
    standard_parts,
    write_signed,
    write_sparse,
)


@pytest.fixture
def trust(tmp_path: Path) -> TrustStore:
    d = tmp_path / "trust"
    d.mkdir()
    shutil.copy(KEYS / "test-ed25519.pub.pem", d)
    return load_trust_store(d, must_exist=True)


def refusal(bundle: Path, trust: TrustStore) -> VerifyError:
    with pytest.raises(VerifyError) as caught:
        verify_bundle(bundle, trust)
    assert caught.value.exit_code == ExitCode.VERIFY_REJECTED
    return caught.value


def test_the_forged_baseline_verifies(tmp_path: Path, trust: TrustStore) -> None:
    report = verify_bundle(write_signed(tmp_path / "ok.mkb"), trust)
    assert len(report.trusted_by) == 1


# ---- item 6: nothing is hashed before the signature is checked -----------------------

def test_unsigned_sparse_bundle_is_refused_before_hashing(tmp_path: Path, trust: TrustStore) -> None:
    """The manifest claims a digest the zeros do not have: a verifier that hashed first
    would report digest-mismatch (after reading the whole component)."""
    bundle = write_sparse(tmp_path / "sparse.mkb", 64 << 20, sha256="0" * 64)
    assert refusal(bundle, trust).code == "unsigned"


def test_untrusted_sparse_bundle_is_refused_before_hashing(tmp_path: Path, trust: TrustStore) -> None:
    bundle = write_sparse(tmp_path / "sparse.mkb", 64 << 20, sha256="0" * 64, keys=[signing_key("other-ed25519")])
    assert refusal(bundle, trust).code == "untrusted-key"


def test_claimed_sizes_are_capped_by_the_file(tmp_path: Path, trust: TrustStore) -> None:
    bundle = write_sparse(tmp_path / "sparse.mkb", 64 << 20, sha256="0" * 64, keys=[signing_key()])
    with bundle.open("r+b") as f:
        f.truncate(4096)
    error = refusal(bundle, trust)
    assert error.code == "truncated" and "components need" in error.message


# ---- item 7: signature members are bounded in number and size ------------------------

def _bundle_with_signatures(tmp_path: Path, extra: list[bytes]) -> Path:
    """The baseline bundle plus raw signature members the writer would refuse."""
    base = write_signed(tmp_path / "base.mkb")
    from mkimage.bundle.container import read_bundle

    with base.open("rb") as f:
        contents = read_bundle(f)
        sigs = sorted([*(raw for raw, _ in contents.signatures), *extra],
                      key=lambda raw: Signature.from_bytes(raw).member_name)
        members = [("manifest.json", len(contents.manifest_bytes), [contents.manifest_bytes])]
        members += [(Signature.from_bytes(raw).member_name, len(raw), [raw]) for raw in sigs]
        if contents.provenance is not None:
            members.append(("provenance.dsse.json", len(contents.provenance), [contents.provenance]))
        for c in contents.manifest.components:
            offset, size = contents.component_offsets[c.path]
            f.seek(offset)
            members.append((c.path, size, [f.read(size)]))
    out = tmp_path / "many.mkb"
    with out.open("wb") as f:
        write_archive(f, members, EPOCH)
    return out


def _untrusted_signature(index: int, sig_bytes: int = 64) -> bytes:
    keyid = f"{index:064x}"
    return Signature(keyid=keyid, scheme="ed25519", sig="ab" * sig_bytes).to_bytes()  # type: ignore[arg-type]


def test_too_many_signatures_are_refused(tmp_path: Path, trust: TrustStore) -> None:
    bundle = _bundle_with_signatures(tmp_path, [_untrusted_signature(i + 1) for i in range(MAX_SIGNATURES)])
    assert refusal(bundle, trust).code == "too-many-signatures"


def test_signatures_up_to_the_limit_are_accepted(tmp_path: Path, trust: TrustStore) -> None:
    bundle = _bundle_with_signatures(tmp_path, [_untrusted_signature(i + 1) for i in range(MAX_SIGNATURES - 1)])
    assert len(verify_bundle(bundle, trust).signatures) == MAX_SIGNATURES


def test_oversized_signature_member_is_refused(tmp_path: Path, trust: TrustStore) -> None:
    big = _untrusted_signature(1, sig_bytes=MAX_SIGNATURE_BYTES // 2)
    assert len(big) > MAX_SIGNATURE_BYTES
    assert refusal(_bundle_with_signatures(tmp_path, [big]), trust).code == "bad-signature-member"


def test_largest_real_signature_fits(tmp_path: Path) -> None:
    """RSA-4096 PSS is the largest signature a key mkspawn accepts can make."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    assert len(make_signature(key, b"{}")) < MAX_SIGNATURE_BYTES


# ---- item 10: role rules hold even under a trusted signature -------------------------

def _parts(**changes: Part | None) -> dict[str, Part]:
    parts = standard_parts()
    for name, part in changes.items():
        if part is None:
            del parts[name]
        else:
            parts[name] = part
    return parts


KERNEL = standard_parts()["bzImage"]
CASES: dict[str, tuple[dict[str, Part], str]] = {
    "no kernel": (_parts(bzImage=None), "bad-roles"),
    "two kernels": (_parts(bzImage2=KERNEL), "bad-roles"),
    "two initrds": (_parts(initrd2=(Role.INITRD, CPIO, NEWC)), "bad-roles"),
    "roles swapped": (_parts(bzImage=(Role.INITRD, BZIMAGE, KERNEL[2]), initrd=(Role.KERNEL, CPIO, NEWC)),
                      "bad-roles"),
    "kernel bytes are a cpio": (_parts(bzImage=(Role.KERNEL, BZIMAGE, NEWC)), "media-type-mismatch"),
    "initrd bytes are a bzImage": (_parts(initrd=(Role.INITRD, CPIO, KERNEL[2])), "media-type-mismatch"),
    "gzip initrd labelled plain cpio": (_parts(initrd=(Role.INITRD, CPIO, gzip.compress(NEWC, mtime=0))),
                                        "media-type-mismatch"),
    "arm64 media on x86_64": (_parts(bzImage=(Role.KERNEL, "application/vnd.linux.arm64-image", KERNEL[2])),
                              "bad-roles"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_trusted_signature_does_not_waive_role_rules(tmp_path: Path, trust: TrustStore, case: str) -> None:
    parts, code = CASES[case]
    error = refusal(write_signed(tmp_path / "b.mkb", parts), trust)
    assert error.code == code, error.message


@pytest.mark.parametrize("initrd", [
    (Role.INITRD, "application/x-cpio+gzip", gzip.compress(NEWC, mtime=0)),
    (Role.INITRD, "application/x-cpio+zstd", NEWC + b"\x28\xb5\x2f\xfd"),  # early cpio, then the main archive
    (Role.INITRD, "application/octet-stream", b"opaque"),
])
def test_consistent_initrds_are_accepted(tmp_path: Path, trust: TrustStore, initrd: Part) -> None:
    verify_bundle(write_signed(tmp_path / "b.mkb", _parts(initrd=initrd)), trust)
