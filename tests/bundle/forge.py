"""Bundles made to order for verifier tests: any manifest, signed by the test keys.

``write_signed`` goes through the real writer, so the container is canonical and only
what a test chooses to make hostile is hostile; ``write_sparse`` assembles the archive
by hand so a gigabyte component of zeros costs no disk blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from mkimage.bundle.container import write_bundle
from mkimage.bundle.manifest import PROVENANCE_MEMBER, Component, Manifest, Provenance, Role, Signature
from mkimage.bundle.provenance import RecipeParameters, make_envelope
from mkimage.bundle.sbom import SBOM_MEDIA_TYPE, SBOM_MEMBER, SbomFacts, SbomMember, make_sbom
from mkimage.bundle.sign import make_signature
from mkimage.bundle.tarball import BLOCK_SIZE, archive_end, padded_size, write_header
from mkimage.signing.keys import PassphraseSource, PrivateKey, load_private_key
from tests.conftest import _build_bzimage

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
EPOCH = 1_700_000_000
BZIMAGE = "application/vnd.linux.bzimage"
CPIO = "application/x-cpio"
NEWC = b"070701" + b"0" * 104

Part = tuple[Role, str, bytes]  # role, media type, data


def signing_key(name: str = "test-ed25519") -> PrivateKey:
    return load_private_key(KEYS / f"{name}.pem", PassphraseSource(), {})


def standard_parts() -> dict[str, Part]:
    return {
        "bzImage": (Role.KERNEL, BZIMAGE, _build_bzimage()),
        "cmdline": (Role.CMDLINE, "text/plain", b"console=ttyS0"),
        "initrd": (Role.INITRD, CPIO, NEWC),
    }


def manifest_for(components: Sequence[Component], *, version: str = "1.0") -> Manifest:
    return Manifest.build(
        recipe_name="forged", recipe_version=version, arch="x86_64", abi_profile="none",  # type: ignore[arg-type]
        kernel_release="6.12.0", components=components,
        provenance=Provenance(source_date_epoch=EPOCH, mkspawn_version="test", tools={}, inputs=(),
                              config_sha256=""),
    )


def forged_sbom(parts: dict[str, Part]) -> bytes:
    members = tuple(SbomMember(role.value, name, hashlib.sha256(data).hexdigest(), media)
                    for name, (role, media, data) in sorted(parts.items()))
    return make_sbom(SbomFacts("forged", "1.0", "6.12.0", "", EPOCH, "test", members, ()))


def write_signed(out: Path, parts: dict[str, Part] | None = None, *, keys: Sequence[PrivateKey] | None = None,
                 signatures: Sequence[bytes] = (), version: str = "1.0", evidence: bool = True,
                 with_provenance: bool | None = None) -> Path:
    """A bundle of ``parts`` (default: kernel, cmdline, initrd) signed by ``keys``
    (default: the trusted test key) plus any raw ``signatures``; with ``evidence`` it also
    carries an SBOM of the parts and a provenance envelope signed by ``keys``
    (``with_provenance`` alone: the envelope over whatever ``parts`` are)."""
    parts = dict(standard_parts() if parts is None else parts)
    if evidence:
        parts[SBOM_MEMBER] = (Role.SBOM, SBOM_MEDIA_TYPE, forged_sbom(parts))
    files = out.parent / f"{out.name}.parts"
    files.mkdir(exist_ok=True)
    sources = []
    components = []
    for name, (role, media, data) in parts.items():
        (files / name).write_bytes(data)
        sources.append((name, files / name))
        components.append(Component(role, name, len(data), hashlib.sha256(data).hexdigest(), media))
    manifest = manifest_for(components, version=version)
    mbytes = manifest.to_bytes()
    signers = keys if keys is not None else [signing_key()]
    sigs = [make_signature(k, mbytes) for k in signers]
    envelope = evidence if with_provenance is None else with_provenance
    provenance = make_envelope(manifest, mbytes, RecipeParameters("forged.toml", {}, ()), signers) if envelope else None
    with out.open("wb") as f:
        write_bundle(f, mbytes, [*sigs, *signatures], sources, EPOCH, provenance=provenance)
    return out


def zeros_sha256(size: int) -> str:
    digest = hashlib.sha256()
    chunk = bytes(1 << 20)
    left = size
    while left:
        digest.update(chunk[: min(left, len(chunk))])
        left -= min(left, len(chunk))
    return digest.hexdigest()


def write_sparse(out: Path, size: int, *, sha256: str | None = None, keys: Sequence[PrivateKey] = (),
                 evidence: bool = False) -> Path:
    """A bundle whose kernel component is ``size`` zero bytes, stored as a hole.

    ``sha256`` is what the manifest claims (default: the real digest, which costs a
    pass over ``size`` zeros).  With ``evidence`` it also carries an SBOM and a provenance
    envelope signed by ``keys``, so it passes every check made before components are hashed.
    """
    kernel = Component(Role.KERNEL, "bzImage", size, sha256 or zeros_sha256(size), BZIMAGE)
    components = [kernel]
    sbom = b""
    if evidence:
        member = SbomMember(Role.KERNEL.value, kernel.path, kernel.sha256, BZIMAGE)
        sbom = make_sbom(SbomFacts("forged", "1.0", "6.12.0", "", EPOCH, "test", (member,), ()))
        components.append(Component(Role.SBOM, SBOM_MEMBER, len(sbom), hashlib.sha256(sbom).hexdigest(),
                                    SBOM_MEDIA_TYPE))
    manifest = manifest_for(components)
    mbytes = manifest.to_bytes()
    sigs = sorted((f"signatures/{_keyid(raw)}.sig", raw) for raw in (make_signature(k, mbytes) for k in keys))
    heads = [("manifest.json", mbytes), *sigs]
    if evidence:
        heads.append((PROVENANCE_MEMBER, make_envelope(manifest, mbytes, RecipeParameters("forged.toml", {}, ()),
                                                       keys)))
    with out.open("wb") as f:
        for name, data in heads:
            _write_member(f, name, data)
        f.write(write_header("bzImage", size, EPOCH))
        f.seek(padded_size(size), 1)  # a hole: the zeros cost no disk blocks
        if evidence:
            _write_member(f, SBOM_MEMBER, sbom)
        f.truncate(archive_end(f.tell()))
    return out


def _write_member(f: BinaryIO, name: str, data: bytes) -> None:
    f.write(write_header(name, len(data), EPOCH) + data + bytes(padded_size(len(data)) - len(data)))


def _keyid(raw_signature: bytes) -> str:
    return Signature.from_bytes(raw_signature).keyid


__all__ = ["BLOCK_SIZE", "EPOCH", "KEYS", "Part", "manifest_for", "signing_key", "standard_parts", "write_signed",
           "write_sparse", "zeros_sha256"]
