"""A strict, canonical subset of POSIX ustar (IEEE Std 1003.1-2017, pax "ustar Interchange
Format").

Only regular files with fixed, canonical header fields are written or accepted: the reader
re-encodes the header it expects from the parsed name, size and mtime and requires byte
equality, so no header byte can change without the archive being rejected.  Nothing here
knows about manifests; ``container`` layers the bundle rules on top.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from mkimage.errors import FormatError

BLOCK_SIZE = 512
# Both GNU tar and POSIX pax default to a blocking factor of 20; padding to it keeps
# `tar` from warning and makes the archive length a pure function of its members.
RECORD_SIZE = 20 * BLOCK_SIZE
# Size and mtime are 11 octal digits plus a NUL; larger values would need the GNU
# base-256 or pax extensions, which canonical headers never use.
MAX_SIZE = 0o77777777777
MAX_MTIME = 0o77777777777
MAX_NAME_BYTES = 100

_ZERO_BLOCK = bytes(BLOCK_SIZE)
_OCTAL_DIGITS = frozenset(b"01234567")

# (field, offset, length) as laid out in the ustar header block.
_FIELDS: tuple[tuple[str, int, int], ...] = (
    ("name", 0, 100),
    ("mode", 100, 8),
    ("uid", 108, 8),
    ("gid", 116, 8),
    ("size", 124, 12),
    ("mtime", 136, 12),
    ("chksum", 148, 8),
    ("typeflag", 156, 1),
    ("linkname", 157, 100),
    ("magic", 257, 6),
    ("version", 263, 2),
    ("uname", 265, 32),
    ("gname", 297, 32),
    ("devmajor", 329, 8),
    ("devminor", 337, 8),
    ("prefix", 345, 155),
    ("pad", 500, 12),
)
SIZE_FIELD_OFFSET = 124
MTIME_FIELD_OFFSET = 136
_SIZE_END = SIZE_FIELD_OFFSET + 12
_MTIME_END = MTIME_FIELD_OFFSET + 12
_CHKSUM_OFFSET = 148
_CHKSUM_LENGTH = 8
_TYPEFLAG_OFFSET = 156

_REGULAR_TYPES = (b"0", b"\0")  # "\0" is the pre-POSIX regular file; it parses, then fails canon
_LINK_TYPES = {b"1": "hard link", b"2": "symbolic link"}
_DEVICE_TYPES = {b"3": "character device", b"4": "block device", b"6": "FIFO"}
_DIRECTORY_TYPE = b"5"


@dataclass(frozen=True, slots=True)
class MemberHeader:
    """One archive member as the reader found it; ``data_offset`` is absolute in the stream."""

    name: str
    size: int
    data_offset: int
    mtime: int

    @property
    def header_offset(self) -> int:
        return self.data_offset - BLOCK_SIZE


def name_problem(name: str) -> tuple[str, str] | None:
    """Why ``name`` is not an acceptable member path, as (error code, reason), or None.

    Shared by the writer, the reader and the manifest so the three can never disagree on
    which paths are legal.
    """
    if name.startswith("/"):
        return "absolute-path", "is an absolute path"
    parts = name.split("/")
    if ".." in parts:
        return "path-traversal", "has a '..' component"
    for ch in name:
        if not " " <= ch <= "~" or ch == "\\":
            return "bad-name", f"contains {ch!r}; only printable ASCII without '\\' is allowed"
    if any(part in ("", ".") for part in parts):
        return "bad-name", "has an empty or '.' component"
    if len(name) > MAX_NAME_BYTES:
        return "bad-name", f"is {len(name)} bytes long; ustar names hold at most {MAX_NAME_BYTES}"
    return None


def padded_size(size: int) -> int:
    return -(-size // BLOCK_SIZE) * BLOCK_SIZE


def archive_end(data_end: int) -> int:
    """Where the archive must end, given where the last member's padded data ends."""
    return -(-(data_end + 2 * BLOCK_SIZE) // RECORD_SIZE) * RECORD_SIZE


def write_header(name: str, size: int, mtime: int) -> bytes:
    """The one canonical 512-byte header for a regular file member."""
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(f"member name {name!r} {problem[1]}")
    if not 0 <= size <= MAX_SIZE:
        raise ValueError(f"member {name!r}: size {size} outside 0..{MAX_SIZE}")
    if not 0 <= mtime <= MAX_MTIME:
        raise ValueError(f"member {name!r}: mtime {mtime} outside 0..{MAX_MTIME}")
    block = bytearray(BLOCK_SIZE)
    values = {
        "name": name.encode("ascii"),
        "mode": b"0000644\0",
        "uid": b"0000000\0",
        "gid": b"0000000\0",
        "size": b"%011o\0" % size,
        "mtime": b"%011o\0" % mtime,
        # The checksum is computed with its own field read as spaces.
        "chksum": b" " * _CHKSUM_LENGTH,
        "typeflag": b"0",
        "magic": b"ustar\0",
        "version": b"00",
        "uname": b"root",
        "gname": b"root",
        "devmajor": b"0000000\0",
        "devminor": b"0000000\0",
    }
    for field, offset, _length in _FIELDS:
        value = values.get(field, b"")
        block[offset : offset + len(value)] = value
    # Six digits, NUL, space: the form GNU tar and POSIX both write; 512 * 255 always fits.
    block[_CHKSUM_OFFSET : _CHKSUM_OFFSET + _CHKSUM_LENGTH] = b"%06o\0 " % sum(block)
    return bytes(block)


def write_archive(
    out: BinaryIO, members: Iterable[tuple[str, int, Iterable[bytes]]], mtime: int
) -> int:
    """Stream ``(name, size, chunks)`` members into ``out``; return the bytes written.

    Chunks are written as they arrive, so memory stays constant however large a member
    is.  A member whose chunks do not add up to its declared size is a caller bug
    (ValueError); the output is then incomplete and must be discarded.
    """
    total = 0
    seen: set[str] = set()
    for name, size, chunks in members:
        if name in seen:
            raise ValueError(f"member {name!r} given twice")
        seen.add(name)
        out.write(write_header(name, size, mtime))
        written = 0
        for chunk in chunks:
            written += len(chunk)
            if written > size:
                raise ValueError(f"member {name!r}: more than the declared {size} bytes")
            out.write(chunk)
        if written != size:
            raise ValueError(f"member {name!r}: got {written} bytes, declared {size}")
        out.write(bytes(padded_size(size) - size))
        total += BLOCK_SIZE + padded_size(size)
    tail = archive_end(total) - total
    out.write(bytes(tail))
    return total + tail


def read_members(f: BinaryIO) -> Iterator[MemberHeader]:
    """Yield each member's header from a seekable stream positioned at the archive start.

    Between yields the caller may read the member with ``iter_data``; the reader then
    moves past the data itself, so hashing members as they are yielded is a single pass.
    Every deviation from the canonical form raises ``FormatError``; the archive is only
    known to be valid once the iterator is exhausted.
    """
    if not f.seekable():
        raise ValueError("read_members needs a seekable stream")
    start = f.tell()
    end = f.seek(0, os.SEEK_END)
    pos = start
    seen: set[str] = set()
    first_mtime: int | None = None
    while True:
        block = _read_block(f, pos, end)
        if block == _ZERO_BLOCK:
            _check_end(f, start, pos, end)
            return
        header = _parse_header(block, pos, end, seen, first_mtime)
        seen.add(header.name)
        if first_mtime is None:
            first_mtime = header.mtime
        yield header
        data_end = header.data_offset + header.size
        _check_padding(f, header.name, data_end, padded_size(header.size) - header.size)
        pos = header.data_offset + padded_size(header.size)


def iter_data(f: BinaryIO, header: MemberHeader, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The member's data in chunks of at most ``chunk_size`` bytes."""
    f.seek(header.data_offset)
    left = header.size
    while left:
        data = f.read(min(chunk_size, left))
        if not data:
            # read_members checked the length up front, so the file shrank under us.
            raise FormatError(
                f"member {header.name!r}: data ends early",
                offset=header.data_offset + header.size - left,
                code="truncated",
            )
        left -= len(data)
        yield data


def _read_block(f: BinaryIO, pos: int, end: int) -> bytes:
    if pos + BLOCK_SIZE > end:
        what = "end-of-archive marker is missing" if pos == end else "archive ends inside a header"
        raise FormatError(what, offset=pos, code="truncated")
    f.seek(pos)
    block = f.read(BLOCK_SIZE)
    if len(block) != BLOCK_SIZE:
        raise FormatError("archive ends inside a header", offset=pos, code="truncated")
    return block


def _parse_octal(field: bytes) -> int | None:
    """Lenient octal parse used only to produce specific errors before the canonical check."""
    digits = field.rstrip(b"\0 ").lstrip(b" ")
    if not digits or not _OCTAL_DIGITS.issuperset(digits):
        return None
    return int(digits, 8)


def _parse_header(
    block: bytes, offset: int, end: int, seen: set[str], first_mtime: int | None
) -> MemberHeader:
    stored = _parse_octal(block[_CHKSUM_OFFSET : _CHKSUM_OFFSET + _CHKSUM_LENGTH])
    computed = (
        sum(block[:_CHKSUM_OFFSET])
        + sum(block[_CHKSUM_OFFSET + _CHKSUM_LENGTH :])
        + _CHKSUM_LENGTH * ord(" ")
    )
    if stored != computed:
        observed = "unreadable" if stored is None else str(stored)
        raise FormatError(
            f"header checksum: observed {observed}, expected {computed}",
            offset=offset + _CHKSUM_OFFSET,
            code="bad-checksum",
        )

    name = block[:MAX_NAME_BYTES].split(b"\0", 1)[0].decode("latin-1")
    _check_type(block[_TYPEFLAG_OFFSET : _TYPEFLAG_OFFSET + 1], name, offset)
    problem = name_problem(name)
    if problem is not None:
        code, reason = problem
        raise FormatError(f"member name {name!r} {reason}", offset=offset, code=code)
    if name in seen:
        raise FormatError(f"member {name!r} appears twice", offset=offset, code="duplicate-member")

    size = _parse_octal(block[SIZE_FIELD_OFFSET:_SIZE_END])
    if size is None or size > MAX_SIZE:
        raise _non_canonical("size", name, offset + SIZE_FIELD_OFFSET)
    data_offset = offset + BLOCK_SIZE
    if data_offset + padded_size(size) > end:
        raise FormatError(
            f"member {name!r} declares {size} bytes but the archive ends at {end}",
            offset=offset + SIZE_FIELD_OFFSET,
            code="truncated",
        )
    mtime = _parse_octal(block[MTIME_FIELD_OFFSET:_MTIME_END])
    if mtime is None or mtime > MAX_MTIME:
        raise _non_canonical("mtime", name, offset + MTIME_FIELD_OFFSET)
    if first_mtime is not None and mtime != first_mtime:
        raise FormatError(
            f"member {name!r} mtime: observed {mtime}, expected {first_mtime} "
            "(all members share one mtime)",
            offset=offset + MTIME_FIELD_OFFSET,
            code="non-canonical-header",
        )

    expected = write_header(name, size, mtime)
    if expected != block:
        # A changed field also changes the checksum; name the field, not its side effect.
        differing = [i for i in range(BLOCK_SIZE) if expected[i] != block[i]]
        index = next((i for i in differing if not _in_chksum(i)), differing[0])
        field = next(fld for fld, start, length in _FIELDS if start <= index < start + length)
        raise _non_canonical(field, name, offset + index)
    return MemberHeader(name=name, size=size, data_offset=data_offset, mtime=mtime)


def _in_chksum(index: int) -> bool:
    return _CHKSUM_OFFSET <= index < _CHKSUM_OFFSET + _CHKSUM_LENGTH


def _check_type(typeflag: bytes, name: str, offset: int) -> None:
    where = offset + _TYPEFLAG_OFFSET
    if typeflag in _REGULAR_TYPES:
        return
    if typeflag in _LINK_TYPES:
        raise FormatError(
            f"member {name!r} is a {_LINK_TYPES[typeflag]}; only regular files are allowed",
            offset=where,
            code="link-member",
        )
    if typeflag in _DEVICE_TYPES:
        raise FormatError(
            f"member {name!r} is a {_DEVICE_TYPES[typeflag]}; only regular files are allowed",
            offset=where,
            code="device-member",
        )
    if typeflag == _DIRECTORY_TYPE:
        raise FormatError(
            f"member {name!r} is a directory; only regular files are allowed",
            offset=where,
            code="directory-member",
        )
    raise FormatError(
        f"member {name!r} has type {typeflag!r} (pax/GNU extensions are not allowed); "
        "only regular files are allowed",
        offset=where,
        code="bad-member-type",
    )


def _non_canonical(field: str, name: str, offset: int) -> FormatError:
    return FormatError(
        f"member {name!r}: non-canonical header field {field}",
        offset=offset,
        code="non-canonical-header",
    )


def _check_padding(f: BinaryIO, name: str, data_end: int, length: int) -> None:
    if not length:
        return
    f.seek(data_end)
    padding = f.read(length)
    if len(padding) != length:
        raise FormatError(f"member {name!r}: padding ends early", offset=data_end, code="truncated")
    if padding != bytes(length):
        index = next(i for i, byte in enumerate(padding) if byte)
        raise FormatError(
            f"member {name!r}: nonzero byte in data padding",
            offset=data_end + index,
            code="bad-padding",
        )


def _check_end(f: BinaryIO, start: int, pos: int, end: int) -> None:
    """After the first zero block: one more, zeros to the record boundary, then EOF."""
    record_end = start + archive_end(pos - start)
    f.seek(pos)
    tail = f.read(min(end, record_end) - pos)
    if tail != bytes(len(tail)):
        index = next(i for i, byte in enumerate(tail) if byte)
        raise FormatError(
            "data after the end-of-archive marker", offset=pos + index, code="trailing-data"
        )
    if end < record_end:
        what = "end-of-archive marker" if end < pos + 2 * BLOCK_SIZE else "record padding"
        raise FormatError(f"archive ends inside the {what}", offset=end, code="truncated")
    if end > record_end:
        raise FormatError(
            f"{end - record_end} bytes after the archive's last record",
            offset=record_end,
            code="trailing-data",
        )
