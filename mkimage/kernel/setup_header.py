"""Decode the x86 boot protocol setup header of a bzImage.

Layout and constants follow ``Documentation/arch/x86/boot.rst`` ("THE REAL-MODE KERNEL
HEADER") and ``struct setup_header`` in ``arch/x86/include/uapi/asm/bootparam.h``: a
packed little-endian struct at file offset 0x1F1.  The decoder checks only what it needs
to decode; whether the header is acceptable to a loader is ``contract``'s job, so a
missing "HdrS" or a wrong boot flag is reported there as a rule, not raised here.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from mkimage.errors import FormatError

# boot.rst: the setup header starts at 0x1F1 in the first sector.
SETUP_HEADER_OFFSET = 0x1F1
# End of the protocol 2.15 header (kernel_info_offset, 0x268..0x26C): the decoder wants
# the whole struct so every field it reads is inside ``data``.
SETUP_HEADER_END = 0x26C

# boot.rst: "setup_sects ... If this field is 0, the real value is 4."
SETUP_SECTS_DEFAULT = 4
SECTOR_SIZE = 512

# boot.rst: boot_flag "Contains 0xAA55", the legacy boot-sector signature.
BOOT_FLAG_MAGIC = 0xAA55
# boot.rst: header "Contains the magic number 'HdrS' (0x53726448)".
HDRS_MAGIC = b"HdrS"

# boot.rst: kernel_version "...set to a pointer (minus 0x200) to a NUL-terminated
# human-readable kernel version number string".  The string lives in the setup sectors;
# bound the scan so a bogus pointer cannot make us read megabytes.
KERNEL_VERSION_BIAS = 0x200
KERNEL_VERSION_MAX_LEN = 512

# boot.rst: loadflags bits.
LOADED_HIGH = 0x01  # protected-mode code loaded at 0x100000 (a bzImage, not a zImage)
KASLR_FLAG = 0x02
QUIET_FLAG = 0x20
KEEP_SEGMENTS = 0x40
CAN_USE_HEAP = 0x80

# boot.rst: xloadflags bits (protocol 2.12+).
XLF_KERNEL_64 = 0x01  # has the legacy 64-bit entry point at 0x200
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02  # set only for RELOCATABLE 64-bit kernels
XLF_EFI_HANDOVER_32 = 0x04
XLF_EFI_HANDOVER_64 = 0x08
XLF_EFI_KEXEC = 0x10
XLF_5LEVEL = 0x20
XLF_5LEVEL_ENABLED = 0x40

# boot.rst "Protocol 2.xx" history: the versions at which fields we read appeared.
PROTOCOL_PAYLOAD = 0x0208  # payload_offset / payload_length
PROTOCOL_XLOADFLAGS = 0x020C  # the minimum kexec's bzImage64 loader accepts

# PE/COFF (EFI stub): "MZ" DOS header whose e_lfanew (at 0x3C) points at "PE\0\0".
# Only such images can carry an Authenticode signature kexec can verify.
DOS_MAGIC = b"MZ"
DOS_E_LFANEW_OFFSET = 0x3C
PE_MAGIC = b"PE\0\0"


class Compression(enum.StrEnum):
    """How the protected-mode payload (the compressed vmlinux) is packed."""

    GZIP = "gzip"
    XZ = "xz"
    ZSTD = "zstd"
    LZ4 = "lz4"
    BZIP2 = "bzip2"
    LZMA = "lzma"
    LZO = "lzo"
    NONE = "none"  # CONFIG_KERNEL_UNCOMPRESSED: the payload is the vmlinux ELF itself
    UNKNOWN = (
        "unknown"  # no payload fields (protocol < 2.08), out of range, or odd magic
    )

    def magics(self) -> tuple[bytes, ...]:
        """Leading bytes that identify this format (empty for NONE/UNKNOWN sentinels)."""
        return _MAGICS.get(self, ())


# Stream magics as the kernel's decompressors expect them (lib/decompress_*.c and the
# tools named in arch/x86/boot/compressed/Makefile).
_MAGICS: dict[Compression, tuple[bytes, ...]] = {
    Compression.GZIP: (b"\x1f\x8b",),
    Compression.XZ: (b"\xfd7zXZ\x00",),
    Compression.ZSTD: (b"\x28\xb5\x2f\xfd",),
    # Kernel lz4 is the legacy frame (`lz4 -l`); the modern frame magic is accepted too.
    Compression.LZ4: (b"\x02\x21\x4c\x18", b"\x04\x22\x4d\x18"),
    Compression.BZIP2: (b"BZh",),
    Compression.LZMA: (b"\x5d\x00\x00",),
    Compression.LZO: (b"\x89LZO\x00\r\n\x1a\n",),
    Compression.NONE: (b"\x7fELF",),
}


@dataclass(frozen=True, slots=True)
class SetupHeader:
    """The fields of ``struct setup_header`` that loaders and our checks use.

    Fields newer than ``version`` hold whatever bytes sit at their offset; check the
    protocol before trusting them (the contract does).
    """

    setup_sects: int  # already mapped 0 -> 4
    syssize: int  # protected-mode code in 16-byte paragraphs (protocol 2.04+; 0 if unset)
    boot_flag: int
    header: bytes  # b"HdrS" on any real bzImage
    version: int  # (major << 8) | minor
    kernel_version: str | None  # None when the pointer is 0 or there is no HdrS
    loadflags: int
    kernel_alignment: int
    relocatable_kernel: int
    xloadflags: int
    cmdline_size: int
    payload_offset: int
    payload_length: int
    pref_address: int
    init_size: int
    handover_offset: int
    compression: Compression

    @property
    def has_hdrs(self) -> bool:
        return self.header == HDRS_MAGIC

    @property
    def protocol(self) -> str:
        return f"{self.version >> 8}.{self.version & 0xFF:02d}"

    @property
    def setup_size(self) -> int:
        """Bytes of the real-mode part: the boot sector plus setup_sects sectors."""
        return (self.setup_sects + 1) * SECTOR_SIZE

    @property
    def declared_size(self) -> int:
        """The file size the header promises: the setup sectors plus syssize paragraphs.

        arch/x86/boot/tools/build.c pads the protected-mode part to exactly syssize*16
        bytes, so a shorter file lost its tail; a longer one may carry a signature.
        """
        return self.setup_size + self.syssize * 16

    @property
    def payload_file_offset(self) -> int:
        """Where the compressed payload starts in the file (payload_offset is relative to
        the protected-mode part, which follows the setup sectors)."""
        return self.setup_size + self.payload_offset

    @property
    def release(self) -> str | None:
        """The first word of kernel_version, which is ``uname -r``."""
        if not self.kernel_version:
            return None
        words = self.kernel_version.split()
        return words[0] if words else None


def _read_kernel_version(data: bytes, pointer: int) -> str | None:
    if pointer == 0:
        return None
    start = pointer + KERNEL_VERSION_BIAS
    if start >= len(data):
        raise FormatError(
            f"kernel_version: pointer 0x{pointer:x} (+0x200) lies beyond the "
            f"{len(data)}-byte image",
            offset=0x20E,
        )
    window = data[start : start + KERNEL_VERSION_MAX_LEN]
    end = window.find(b"\0")
    if end < 0:
        raise FormatError(
            f"kernel_version: no NUL within {KERNEL_VERSION_MAX_LEN} bytes of the string",
            offset=start,
        )
    try:
        return window[:end].decode("ascii")
    except UnicodeDecodeError as e:
        raise FormatError(
            f"kernel_version: string is not ASCII (byte 0x{window[e.start]:02x})",
            offset=start + e.start,
        ) from e


def identify_compression(blob: bytes) -> Compression:
    """The payload format named by the magic at the start of ``blob``."""
    for kind, magics in _MAGICS.items():
        if any(blob.startswith(m) for m in magics):
            return kind
    return Compression.UNKNOWN


def _payload_compression(
    data: bytes, version: int, setup_size: int, offset: int
) -> Compression:
    if version < PROTOCOL_PAYLOAD:
        return Compression.UNKNOWN
    start = setup_size + offset
    if start >= len(data):
        # A truncated image is the contract's "not-truncated" rule to report.
        return Compression.UNKNOWN
    return identify_compression(data[start : start + 16])


def parse_setup_header(data: bytes) -> SetupHeader:
    """Decode the setup header of ``data``, a whole bzImage (or its first sectors).

    Raises FormatError if ``data`` is too short to hold the header or the kernel_version
    string pointer is bad.  The payload compression is read only if ``data`` reaches it.
    """
    if len(data) < SETUP_HEADER_END:
        raise FormatError(
            f"setup header: need {SETUP_HEADER_END} bytes, got {len(data)}",
            offset=len(data),
        )
    setup_sects = data[0x1F1] or SETUP_SECTS_DEFAULT
    (syssize,) = struct.unpack_from("<I", data, 0x1F4)
    (boot_flag,) = struct.unpack_from("<H", data, 0x1FE)
    header = bytes(data[0x202:0x206])
    (version, kernel_version_ptr) = struct.unpack_from("<H6xH", data, 0x206)
    loadflags = data[0x211]
    (kernel_alignment, relocatable_kernel) = struct.unpack_from("<IB", data, 0x230)
    (xloadflags, cmdline_size) = struct.unpack_from("<HI", data, 0x236)
    (payload_offset, payload_length) = struct.unpack_from("<II", data, 0x248)
    (pref_address, init_size, handover_offset) = struct.unpack_from("<QII", data, 0x258)
    kernel_version = (
        _read_kernel_version(data, kernel_version_ptr) if header == HDRS_MAGIC else None
    )
    setup_size = (setup_sects + 1) * SECTOR_SIZE
    return SetupHeader(
        setup_sects=setup_sects,
        syssize=syssize,
        boot_flag=boot_flag,
        header=header,
        version=version,
        kernel_version=kernel_version,
        loadflags=loadflags,
        kernel_alignment=kernel_alignment,
        relocatable_kernel=relocatable_kernel,
        xloadflags=xloadflags,
        cmdline_size=cmdline_size,
        payload_offset=payload_offset,
        payload_length=payload_length,
        pref_address=pref_address,
        init_size=init_size,
        handover_offset=handover_offset,
        compression=_payload_compression(data, version, setup_size, payload_offset),
    )


def payload_bytes(data: bytes, header: SetupHeader) -> bytes:
    """The compressed payload, bounded by payload_length; FormatError if out of range."""
    if header.version < PROTOCOL_PAYLOAD:
        raise FormatError(
            f"payload_offset: protocol {header.protocol} predates 2.08, no payload fields",
            offset=0x206,
        )
    start = header.payload_file_offset
    end = start + header.payload_length
    if header.payload_length == 0 or end > len(data):
        raise FormatError(
            f"payload_length: payload [{start}, {end}) is empty or exceeds the "
            f"{len(data)}-byte image",
            offset=0x24C,
        )
    return data[start:end]


def is_pe(data: bytes) -> bool:
    """Whether ``data`` is a PE/COFF image (an EFI-stub kernel), hence signable."""
    if not data.startswith(DOS_MAGIC) or len(data) < DOS_E_LFANEW_OFFSET + 4:
        return False
    (e_lfanew,) = struct.unpack_from("<I", data, DOS_E_LFANEW_OFFSET)
    return data[e_lfanew : e_lfanew + 4] == PE_MAGIC
