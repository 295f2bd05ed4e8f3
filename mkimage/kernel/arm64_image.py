"""Decode the 64-byte header of an arm64 ``Image``.

Layout from ``Documentation/arch/arm64/booting.rst`` ("Call the kernel image") and
``arch/arm64/include/asm/image.h``; all fields little-endian.  With the EFI stub, code0
begins with "MZ" and the last word points at the PE header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mkimage.errors import FormatError

ARM64_HEADER_SIZE = 64
# image.h: ARM64_IMAGE_MAGIC "ARM\x64" at offset 0x38.
ARM64_MAGIC = b"ARM\x64"
ARM64_MAGIC_OFFSET = 0x38

# booting.rst, "flags" field: bit 0 kernel endianness (1 = big-endian); bits 1-2 the
# kernel page size (0 unspecified, 1 4K, 2 16K, 3 64K); bit 3 physical placement
# (0 = near the start of DRAM, 1 = anywhere in physical memory).
FLAG_BE = 0x1
FLAG_PAGE_SIZE_SHIFT = 1
FLAG_PAGE_SIZE_MASK = 0x3
FLAG_PHYS_BASE = 0x8
PAGE_SIZES: dict[int, int | None] = {0: None, 1: 4096, 2: 16384, 3: 65536}

_LAYOUT = struct.Struct("<II QQQ QQQ 4sI")


@dataclass(frozen=True, slots=True)
class Arm64ImageHeader:
    code0: int
    code1: int
    text_offset: int
    image_size: int  # 0 on kernels before v3.17, which kexec refuses
    flags: int
    magic: bytes
    pe_offset: int  # "res5"; the PE header offset when built with the EFI stub

    @property
    def big_endian(self) -> bool:
        return bool(self.flags & FLAG_BE)

    @property
    def page_size(self) -> int | None:
        """Kernel page size in bytes, or None when the image leaves it unspecified."""
        return PAGE_SIZES[(self.flags >> FLAG_PAGE_SIZE_SHIFT) & FLAG_PAGE_SIZE_MASK]

    @property
    def phys_base_anywhere(self) -> bool:
        return bool(self.flags & FLAG_PHYS_BASE)


def has_arm64_magic(data: bytes) -> bool:
    return data[ARM64_MAGIC_OFFSET : ARM64_MAGIC_OFFSET + 4] == ARM64_MAGIC


def parse_arm64_header(data: bytes) -> Arm64ImageHeader:
    """Decode the header; FormatError if ``data`` is shorter than 64 bytes or the magic
    is missing (the two things ``kexec_file(Image)``'s probe checks)."""
    if len(data) < ARM64_HEADER_SIZE:
        raise FormatError(
            f"arm64 Image header: need {ARM64_HEADER_SIZE} bytes, got {len(data)}",
            offset=len(data),
        )
    code0, code1, text_offset, image_size, flags, _r2, _r3, _r4, magic, pe_offset = (
        _LAYOUT.unpack_from(data, 0)
    )
    if magic != ARM64_MAGIC:
        raise FormatError(
            f"magic: expected {ARM64_MAGIC!r}, got {magic!r}", offset=ARM64_MAGIC_OFFSET
        )
    return Arm64ImageHeader(
        code0=code0,
        code1=code1,
        text_offset=text_offset,
        image_size=image_size,
        flags=flags,
        magic=magic,
        pe_offset=pe_offset,
    )
