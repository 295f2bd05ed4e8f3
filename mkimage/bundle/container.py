"""Bundle format v1: a canonical ustar archive holding a manifest, its signatures and the
components the manifest names.

Member order is fixed: ``manifest.json``, then ``signatures/<keyid>.sig`` sorted by name,
then the optional ``provenance.dsse.json`` (signed evidence about the manifest, so it
cannot be a component), then the components in manifest (path) order.  Reading is one streaming pass that checks
every component's size and sha256 against the manifest.  No cryptography happens here:
the signatures are returned with the exact manifest bytes they must be verified over.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from mkimage.bundle.manifest import (
    MANIFEST_MEMBER,
    PROVENANCE_MEMBER,
    SIGNATURE_DIR,
    Component,
    Manifest,
    Signature,
)
from mkimage.bundle.tarball import (
    BLOCK_SIZE,
    MTIME_FIELD_OFFSET,
    SIZE_FIELD_OFFSET,
    MemberHeader,
    iter_data,
    padded_size,
    read_members,
    write_archive,
)
from mkimage.digests import range_sha256
from mkimage.errors import FormatError

# Bounds on what is read into memory before anything is verified; real manifests are a
# few KiB and the largest signature (RSA-4096 PSS) is about 1.1 KiB of JSON.  Every
# signature is checked, so the count also bounds the public-key work an unsigned
# stranger can make a verifier do (docs/bundle-format.md).
MAX_MANIFEST_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 4 << 10
MAX_SIGNATURES = 16
# An SLSA statement lists every component and input: a few KiB, far below this.
MAX_PROVENANCE_BYTES = 1 << 20
CHUNK_SIZE = 1 << 20

# A component's data: a file, or a callable streaming it (e.g. from another bundle when
# re-signing).  Called once, while the member is written.
ComponentSource = Path | Callable[[], Iterable[bytes]]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class BundleHead:
    """What precedes the components: the manifest (bytes as read) and the signatures."""

    manifest_bytes: bytes
    manifest: Manifest
    signatures: tuple[tuple[bytes, Signature], ...]
    provenance: bytes | None = None  # the DSSE envelope's bytes as read


# Called once the manifest and signatures are read and before any component is hashed,
# so a verifier can refuse an unsigned bundle without reading gigabytes it claims.
HeadCheck = Callable[[BundleHead], None]


@dataclass(frozen=True, slots=True)
class BundleContents:
    """A structurally valid bundle: every component matched the manifest's size and sha256.

    ``manifest_bytes`` are the bytes as read; signatures must be verified over them.
    ``component_offsets`` maps each component path to its (data offset, size).
    """

    manifest_bytes: bytes
    manifest: Manifest
    signatures: tuple[tuple[bytes, Signature], ...]
    component_offsets: Mapping[str, tuple[int, int]]
    provenance: bytes | None = None


def write_bundle(
    out: BinaryIO,
    manifest_bytes: bytes,
    signatures: Sequence[bytes],
    components: Sequence[tuple[str, ComponentSource]],
    mtime: int,
    provenance: bytes | None = None,
) -> int:
    """Write a bundle to ``out`` and return its length.

    ``signatures`` are encoded ``Signature`` documents; ``components`` pairs each manifest
    path with the file (or stream) holding its data.  Anything inconsistent with the manifest is a
    caller bug and raises ValueError, so a bundle the reader would reject is never
    finished.
    """
    try:
        manifest = Manifest.from_bytes(manifest_bytes)
    except FormatError as e:
        raise ValueError(f"manifest bytes are not a valid manifest: {e}") from e
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise ValueError(f"manifest is {len(manifest_bytes)} bytes, limit {MAX_MANIFEST_BYTES}")
    if mtime != manifest.provenance.source_date_epoch:
        raise ValueError(
            f"mtime {mtime} differs from the manifest's source_date_epoch "
            f"{manifest.provenance.source_date_epoch}"
        )

    signature_members: dict[str, bytes] = {}
    for raw in signatures:
        try:
            signature = Signature.from_bytes(raw)
        except FormatError as e:
            raise ValueError(f"not a valid signature document: {e}") from e
        if signature.member_name in signature_members:
            raise ValueError(f"two signatures by key {signature.keyid}")
        if len(raw) > MAX_SIGNATURE_BYTES:
            raise ValueError(f"signature by {signature.keyid} exceeds {MAX_SIGNATURE_BYTES} bytes")
        signature_members[signature.member_name] = raw
    if len(signature_members) > MAX_SIGNATURES:
        raise ValueError(f"{len(signature_members)} signatures, limit {MAX_SIGNATURES}")

    files = dict(components)
    if len(files) != len(components):
        raise ValueError("a component path is given twice")
    expected = [component.path for component in manifest.components]
    if sorted(files) != expected:
        missing = sorted(set(expected) - set(files))
        extra = sorted(set(files) - set(expected))
        raise ValueError(f"components differ from the manifest: missing {missing}, extra {extra}")

    members: list[tuple[str, int, Iterable[bytes]]] = [
        (MANIFEST_MEMBER, len(manifest_bytes), [manifest_bytes])
    ]
    members += [(name, len(raw), [raw]) for name, raw in sorted(signature_members.items())]
    if provenance is not None:
        if len(provenance) > MAX_PROVENANCE_BYTES:
            raise ValueError(f"{PROVENANCE_MEMBER} is {len(provenance)} bytes, limit {MAX_PROVENANCE_BYTES}")
        members.append((PROVENANCE_MEMBER, len(provenance), [provenance]))
    members += [
        (component.path, component.size, _source_chunks(files[component.path], component))
        for component in manifest.components
    ]
    return write_archive(out, members, mtime)


def _source_chunks(source: ComponentSource, component: Component) -> Iterator[bytes]:
    """Stream a component, checking it still matches what the manifest promises.

    The chunks hashed are the chunks yielded to be written, and the check comes before the
    next member is written.  (Hashing in a worker thread beside the writing measured no
    faster on two cores: the data then crosses between the cores' caches.)
    """
    digest = hashlib.sha256()
    chunks = _read_file(source) if isinstance(source, Path) else source()
    for chunk in chunks:
        digest.update(chunk)
        yield chunk
    observed = digest.hexdigest()
    if observed != component.sha256:
        raise ComponentMismatch(component.path, observed, component.sha256, str(source))


class ComponentMismatch(ValueError):
    """A component's stream did not hash to the manifest's sha256 for it; what was written
    must be discarded.  A caller bug when the data came from our own files; bad input when
    a caller streams untrusted bytes (a pull) and reports it as such."""

    def __init__(self, path: str, observed: str, expected: str, source: str) -> None:
        super().__init__(f"{source}: sha256 {observed} differs from the manifest's {expected} for {path!r}")
        self.path, self.observed, self.expected = path, observed, expected


def _read_file(path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_SIZE):
            yield chunk


def read_bundle(f: BinaryIO, check_head: HeadCheck | None = None) -> BundleContents:
    """Read and structurally verify a bundle from a seekable stream; FormatError if invalid.

    ``check_head`` sees the manifest and signatures before any component data is read.
    """
    return _read(f, check_head, _check_component)


def read_layout(f: BinaryIO, check_head: HeadCheck | None = None) -> BundleContents:
    """``read_bundle`` without hashing the components: every header, the order, the sizes
    and the padding are checked, the component bytes are not.

    Only for a caller whose component bytes are hashed on another path it relies on: a
    push (the registry refuses a blob that does not match its digest, a layout store
    hashes what it copies) or reading back what ``write_bundle`` just wrote (the writer
    hashed each component as it wrote it).
    """
    return _read(f, check_head, _check_size)


def _read(f: BinaryIO, check_head: HeadCheck | None,
          check_component: Callable[[BinaryIO, MemberHeader, Component], None]) -> BundleContents:
    start = f.tell()
    file_end = f.seek(0, os.SEEK_END)
    f.seek(start)
    members = read_members(f)
    first = next(members, None)
    if first is None:
        raise FormatError(
            f"the bundle is empty; {MANIFEST_MEMBER} must come first",
            offset=start,
            code="manifest-not-first",
        )
    if first.name != MANIFEST_MEMBER:
        raise FormatError(
            f"first member is {first.name!r}, expected {MANIFEST_MEMBER}",
            offset=first.header_offset,
            code="manifest-not-first",
        )
    if first.size > MAX_MANIFEST_BYTES:
        raise FormatError(
            f"{MANIFEST_MEMBER} is {first.size} bytes, limit {MAX_MANIFEST_BYTES}",
            offset=first.header_offset,
            code="manifest-too-large",
        )
    manifest_bytes = b"".join(iter_data(f, first))
    manifest = _decode(
        first, manifest_bytes, lambda data, base: Manifest.from_bytes(data, base_offset=base)
    )
    epoch = manifest.provenance.source_date_epoch
    if first.mtime != epoch:
        raise FormatError(
            f"member mtime: observed {first.mtime}, expected the manifest's "
            f"source_date_epoch {epoch}",
            offset=first.header_offset + MTIME_FIELD_OFFSET,
            code="non-canonical-header",
        )
    _check_claimed_sizes(manifest, first, file_end)

    by_path = {component.path: component for component in manifest.components}
    expected = iter(manifest.components)
    pending = next(expected, None)
    signatures: list[tuple[bytes, Signature]] = []
    provenance: bytes | None = None
    offsets: dict[str, tuple[int, int]] = {}
    previous = first.name
    head_checked = False
    for header in members:
        if header.name.startswith(SIGNATURE_DIR):
            if offsets or provenance is not None or header.name < previous:
                raise FormatError(
                    f"signature member {header.name!r} is out of order",
                    offset=header.header_offset,
                    code="bad-member-order",
                )
            if len(signatures) == MAX_SIGNATURES:
                raise FormatError(
                    f"more than {MAX_SIGNATURES} signature members",
                    offset=header.header_offset,
                    code="too-many-signatures",
                )
            signatures.append(_read_signature(f, header))
        elif header.name == PROVENANCE_MEMBER:
            if offsets or provenance is not None:
                raise FormatError(f"member {header.name!r} is out of order", offset=header.header_offset,
                                  code="bad-member-order")
            if header.size > MAX_PROVENANCE_BYTES:
                raise FormatError(f"{header.name} is {header.size} bytes, limit {MAX_PROVENANCE_BYTES}",
                                  offset=header.header_offset, code="bad-provenance")
            provenance = b"".join(iter_data(f, header))
        else:
            if not head_checked and check_head is not None:
                check_head(BundleHead(manifest_bytes, manifest, tuple(signatures), provenance))
            head_checked = True
            component = by_path.get(header.name)
            if component is None:
                raise FormatError(
                    f"member {header.name!r} is not in the manifest",
                    offset=header.header_offset,
                    code="extra-member",
                )
            if pending is None or header.name != pending.path:
                _raise_misplaced(header, pending)
            check_component(f, header, component)
            offsets[header.name] = (header.data_offset, header.size)
            pending = next(expected, None)
        previous = header.name
    if pending is not None:
        raise FormatError(
            f"component {pending.path!r} named in the manifest is missing",
            code="missing-member",
        )
    if not head_checked and check_head is not None:
        check_head(BundleHead(manifest_bytes, manifest, tuple(signatures), provenance))
    return BundleContents(
        manifest_bytes=manifest_bytes,
        manifest=manifest,
        signatures=tuple(signatures),
        component_offsets=offsets,
        provenance=provenance,
    )


def _check_claimed_sizes(manifest: Manifest, first: MemberHeader, file_end: int) -> None:
    """The components the manifest claims must fit in the file, before any is read."""
    after_manifest = first.data_offset + padded_size(first.size)
    claimed = sum(BLOCK_SIZE + padded_size(c.size) for c in manifest.components)
    if after_manifest + claimed > file_end:
        raise FormatError(
            f"the manifest's components need {claimed} bytes but the file has "
            f"{max(0, file_end - after_manifest)} after {MANIFEST_MEMBER}",
            offset=first.header_offset,
            code="truncated",
        )


def iter_component(
    f: BinaryIO, contents: BundleContents, path: str, chunk_size: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """A component's data, re-read from ``f``; it is only as trustworthy as ``f`` is stable."""
    offset, size = contents.component_offsets[path]
    epoch = contents.manifest.provenance.source_date_epoch
    header = MemberHeader(name=path, size=size, data_offset=offset, mtime=epoch)
    return iter_data(f, header, chunk_size)


def _decode(header: MemberHeader, data: bytes, decode: Callable[[bytes, int], _T]) -> _T:
    try:
        return decode(data, header.data_offset)
    except FormatError as e:
        if e.offset is not None:
            raise
        # Field errors carry no offset of their own; point at the member they came from.
        raise FormatError(
            f"{header.name}: {e.message}", offset=header.data_offset, code=e.code
        ) from e


def _read_signature(f: BinaryIO, header: MemberHeader) -> tuple[bytes, Signature]:
    if header.size > MAX_SIGNATURE_BYTES:
        raise FormatError(
            f"signature member {header.name!r} is {header.size} bytes, "
            f"limit {MAX_SIGNATURE_BYTES}",
            offset=header.header_offset,
            code="bad-signature-member",
        )
    raw = b"".join(iter_data(f, header))
    signature = _decode(
        header,
        raw,
        lambda data, base: Signature.from_bytes(data, what=header.name, base_offset=base),
    )
    if signature.member_name != header.name:
        raise FormatError(
            f"signature member name: observed {header.name!r}, "
            f"expected {signature.member_name!r} for its keyid",
            offset=header.header_offset,
            code="bad-signature-member",
        )
    return raw, signature


def _raise_misplaced(header: MemberHeader, pending: Component | None) -> None:
    # Both sequences are sorted, so a name past the pending one means it was skipped.
    if pending is not None and header.name > pending.path:
        raise FormatError(
            f"component {pending.path!r} named in the manifest is missing "
            f"(expected before {header.name!r})",
            offset=header.header_offset,
            code="missing-member",
        )
    raise FormatError(
        f"member {header.name!r} is out of order",
        offset=header.header_offset,
        code="bad-member-order",
    )


def _check_size(_f: BinaryIO, header: MemberHeader, component: Component) -> None:
    if header.size != component.size:
        raise FormatError(
            f"member {header.name!r} size: observed {header.size}, expected {component.size}",
            offset=header.header_offset + SIZE_FIELD_OFFSET,
            code="size-mismatch",
        )


def _check_component(f: BinaryIO, header: MemberHeader, component: Component) -> None:
    _check_size(f, header, component)
    # One pass into a reused buffer: verification runs at hashlib's speed.
    observed, read = range_sha256(f, header.data_offset, header.size)
    if read != header.size:
        # read_members checked the length up front, so the file shrank under us.
        raise FormatError(f"member {header.name!r}: data ends early", offset=header.data_offset + read,
                          code="truncated")
    if observed != component.sha256:
        raise FormatError(
            f"member {header.name!r} sha256: observed {observed}, "
            f"expected {component.sha256}",
            offset=header.data_offset,
            code="digest-mismatch",
        )
