"""Decode an initramfs as the kernel does (init/initramfs.c ``unpack_to_rootfs``).

An initramfs is a sequence of NUL padding, uncompressed newc/crc archives (each on a
4-byte boundary) and compressed streams whose contents are again archives and padding.
Each uncompressed archive and each compressed stream is one :class:`Segment`.  Any
input yields segments or raises FormatError naming the offset; nothing else.
"""

from __future__ import annotations

import stat
from dataclasses import dataclass, field
from pathlib import Path

from mkimage.errors import FormatError, InputError
from mkimage.initramfs.compress import decompress_segment, detect_magic
from mkimage.initramfs.newc import (
    ALIGN,
    CRC_MAGIC,
    HEADER_SIZE,
    NEWC_MAGIC,
    ODC_MAGIC,
    PATH_MAX,
    TRAILER_NAME,
    show_name,
)
from mkimage.recipe.model import Compression

_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize", "devmajor", "devminor",
           "rdevmajor", "rdevminor", "namesize", "check")
_HEX = frozenset(b"0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class CpioMember:
    """One decoded member.  ``offset`` is its header's position in the segment's
    (decompressed) bytes; ``data`` is the file contents or the symlink target."""

    name: bytes
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    mtime: int
    dev_major: int
    dev_minor: int
    rdev_major: int
    rdev_minor: int
    data: bytes
    offset: int
    crc: bool = False

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def target(self) -> bytes | None:
        return self.data if stat.S_ISLNK(self.mode) else None


@dataclass(frozen=True, slots=True)
class Segment:
    index: int
    offset: int  # in the whole initramfs
    length: int  # bytes of the initramfs it spans
    compression: Compression
    members: list[CpioMember] = field(default_factory=list)


def read_initramfs_file(path: Path) -> list[Segment]:
    """``read_initramfs`` on a file; errors name the file."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: {e.strerror}", code="unreadable") from None
    try:
        return read_initramfs(data)
    except FormatError as e:
        raise FormatError(f"{path}: {e.message}", code=e.code) from None


def read_initramfs(data: bytes) -> list[Segment]:
    """Every segment of a (possibly concatenated, possibly compressed) initramfs."""
    segments: list[Segment] = []
    pos = 0
    while pos < len(data):
        byte = data[pos]
        if byte == 0:
            pos += 1
            continue
        if byte == ord("0") and pos % ALIGN == 0:
            members, end = _parse_archive(data, pos, absolute=pos)
            segments.append(Segment(len(segments), pos, end - pos, Compression.NONE, members))
            pos = end
            continue
        segments.append(_compressed_segment(data, pos, len(segments)))
        pos = segments[-1].offset + segments[-1].length
    return segments


def _compressed_segment(data: bytes, pos: int, index: int) -> Segment:
    magic = detect_magic(data[pos:pos + 8])
    if magic is None:
        what = "misaligned archive" if data[pos] == ord("0") else "no cpio magic and no known compression magic"
        raise FormatError(what, offset=pos)
    if magic.compression is None:
        raise FormatError(f"{magic.name}-compressed segment: this reader only decodes gzip, xz, zstd and lz4",
                          offset=pos, code="unsupported-compression")
    plain, consumed = decompress_segment(magic.compression, data[pos:], pos)
    members = _parse_stream(plain, pos, magic.name)
    return Segment(index, pos, consumed, magic.compression, members)


def _parse_stream(plain: bytes, segment_offset: int, label: str) -> list[CpioMember]:
    """Archives and NUL padding inside a decompressed stream (``flush_buffer``)."""
    members: list[CpioMember] = []
    pos = 0
    if not plain:
        raise FormatError(f"empty {label} stream", offset=segment_offset)
    while pos < len(plain):
        if plain[pos] == 0:
            pos += 1
            continue
        if plain[pos] != ord("0"):
            raise FormatError(f"junk within {label} archive at decompressed offset {pos}", offset=segment_offset)
        found, pos = _parse_archive(plain, pos, absolute=None, label=label, segment_offset=segment_offset)
        members += found
    return members


def _parse_archive(data: bytes, start: int, *, absolute: int | None, label: str = "",
                   segment_offset: int = 0) -> tuple[list[CpioMember], int]:
    """Members from ``start`` up to and including TRAILER!!! (optional at the end of
    the data, as for the kernel); return them and the aligned end offset."""
    members: list[CpioMember] = []
    pos = start
    while pos < len(data):
        try:
            member, pos = _parse_member(data, pos)
        except _Bad as e:
            where = e.offset if absolute is not None else segment_offset
            inner = "" if absolute is not None else f" (decompressed {label} offset {e.offset})"
            raise FormatError(f"{e.message}{inner}", offset=where) from None
        if member.name == TRAILER_NAME:
            return members, pos
        members.append(member)
        if pos < len(data) and data[pos] != ord("0"):
            break  # trailer-less archive followed by padding or another segment
    return members, pos


class _Bad(Exception):
    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def _parse_member(data: bytes, pos: int) -> tuple[CpioMember, int]:
    header = data[pos:pos + HEADER_SIZE]
    magic = header[:6]
    if magic == ODC_MAGIC:
        raise _Bad("odc (070707) archive; the kernel only reads newc (070701) and crc (070702)", pos)
    if magic not in (NEWC_MAGIC, CRC_MAGIC):
        raise _Bad(f"bad cpio magic {magic!r}", pos)
    if len(header) < HEADER_SIZE:
        raise _Bad("truncated cpio header", pos)
    values = {}
    for i, name in enumerate(_FIELDS):
        raw = header[6 + 8 * i:14 + 8 * i]
        if not _HEX.issuperset(raw):
            raise _Bad(f"field {name} is not 8 hex digits: {raw!r}", pos + 6 + 8 * i)
        values[name] = int(raw, 16)
    namesize, filesize = values["namesize"], values["filesize"]
    if not 0 < namesize <= PATH_MAX:
        raise _Bad(f"namesize {namesize} outside 1..{PATH_MAX}", pos + 94)
    name_at = pos + HEADER_SIZE
    raw_name = data[name_at:name_at + namesize]
    if len(raw_name) < namesize:
        raise _Bad("truncated name", name_at)
    if raw_name[-1] != 0 or 0 in raw_name[:-1]:
        raise _Bad(f"name is not one NUL-terminated string: {show_name(raw_name)!r}", name_at)
    data_at = _align(name_at + namesize)
    end = data_at + filesize
    if end > len(data) or data_at > len(data):
        raise _Bad(f"{show_name(raw_name[:-1])}: {filesize} bytes of data run past the end", data_at)
    body = data[data_at:end]
    crc = magic == CRC_MAGIC
    if crc and sum(body) & 0xFFFFFFFF != values["check"]:
        raise _Bad(f"{show_name(raw_name[:-1])}: checksum {values['check']:#x} does not match the data", pos + 102)
    member = CpioMember(raw_name[:-1], values["ino"], values["mode"], values["uid"], values["gid"], values["nlink"],
                        values["mtime"], values["devmajor"], values["devminor"], values["rdevmajor"],
                        values["rdevminor"], body, pos, crc)
    return member, min(_align(end), len(data))


def _align(n: int) -> int:
    return n + (-n % ALIGN)
