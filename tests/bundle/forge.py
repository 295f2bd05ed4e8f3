"""Bundles made to order for verifier tests: any manifest, signed by the test keys.

``write_signed`` goes through the real writer, so the container is canonical and only
what a test chooses to make hostile is hostile; ``write_sparse`` assembles the archive
by hand so a gigabyte component of zeros costs no disk blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from mkimage.bundle.container import write_bundle
from mkimage.bundle.manifest import Component, Manifest, Provenance, Role, Signature
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


def write_signed(out: Path, parts: dict[str, Part] | None = None, *, keys: Sequence[PrivateKey] | None = None,
                 signatures: Sequence[bytes] = (), version: str = "1.0") -> Path:
    """A bundle of ``parts`` (default: kernel, cmdline, initrd) signed by ``keys``
    (default: the trusted test key) plus any raw ``signatures``."""
    parts = standard_parts() if parts is None else parts
    files = out.parent / f"{out.name}.parts"
    files.mkdir(exist_ok=True)
    sources = []
    components = []
    for name, (role, media, data) in parts.items():
        (files / name).write_bytes(data)
        sources.append((name, files / name))
        components.append(Component(role, name, len(data), hashlib.sha256(data).hexdigest(), media))
    mbytes = manifest_for(components, version=version).to_bytes()
    sigs = [make_signature(k, mbytes) for k in (keys if keys is not None else [signing_key()])]
    with out.open("wb") as f:
        write_bundle(f, mbytes, [*sigs, *signatures], sources, EPOCH)
    return out


def zeros_sha256(size: int) -> str:
    digest = hashlib.sha256()
    chunk = bytes(1 << 20)
    left = size
    while left:
        digest.update(chunk[: min(left, len(chunk))])
        left -= min(left, len(chunk))
    return digest.hexdigest()


def write_sparse(out: Path, size: int, *, sha256: str | None = None, keys: Sequence[PrivateKey] = ()) -> Path:
    """A bundle whose one kernel component is ``size`` zero bytes, stored as a hole.

    ``sha256`` is what the manifest claims (default: the real digest, which costs a
    pass over ``size`` zeros)."""
    component = Component(Role.KERNEL, "bzImage", size, sha256 or zeros_sha256(size), BZIMAGE)
    mbytes = manifest_for([component]).to_bytes()
    sigs = sorted((f"signatures/{_keyid(raw)}.sig", raw) for raw in (make_signature(k, mbytes) for k in keys))
    with out.open("wb") as f:
        for name, data in [("manifest.json", mbytes), *sigs]:
            f.write(write_header(name, len(data), EPOCH) + data + bytes(padded_size(len(data)) - len(data)))
        f.write(write_header("bzImage", size, EPOCH))
        data_end = f.tell() + padded_size(size)
        f.truncate(archive_end(data_end))
    return out


def _keyid(raw_signature: bytes) -> str:
    return Signature.from_bytes(raw_signature).keyid


__all__ = ["BLOCK_SIZE", "EPOCH", "KEYS", "Part", "manifest_for", "signing_key", "standard_parts", "write_signed",
           "write_sparse", "zeros_sha256"]
