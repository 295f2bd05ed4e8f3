"""Read the kernel release and the embedded ``.config`` back out of a kernel image.

The release is what ``uname -r`` will print, so bundles and module trees can be matched
to the kernel without trusting a file name.  Sources, in order of preference:

* bzImage: the setup header's kernel_version string (its first word);
* ELF vmlinux: the ``linux_banner`` symbol ("Linux version <release> ...") mapped through
  PT_LOAD, else the first banner in ``.rodata``;
* otherwise (or when the above are absent) the banner found in the raw or decompressed
  kernel.

The configuration is present only with ``CONFIG_IKCONFIG=y``: ``kernel/configs.c`` wraps
the gzipped ``.config`` in the ASCII markers "IKCFG_ST" and "IKCFG_ED" (the same markers
``scripts/extract-ikconfig`` looks for).  In a bzImage it sits inside the compressed
payload, so reading it needs that payload's codec.
"""

from __future__ import annotations

import bz2
import importlib
import io
import lzma
import re
import struct
import zlib
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

from mkimage.errors import FormatError, MkspawnError
from mkimage.kernel import elfnote
from mkimage.kernel.setup_header import (
    HDRS_MAGIC,
    Compression,
    identify_compression,
    parse_setup_header,
    payload_bytes,
)

if TYPE_CHECKING:  # pyelftools is imported where an ELF is read (see elfnote)
    from elftools.elf.elffile import ELFFile

# init/version.c: linux_banner = "Linux version " UTS_RELEASE " (" ... ")".
BANNER_PREFIX = b"Linux version "
BANNER_MAX_LEN = 512
# A release starts "<major>.<minor>" and runs to the first blank (init/Makefile builds
# UTS_RELEASE from KERNELRELEASE, which has no spaces).
RELEASE_RE = re.compile(rb"[0-9]+\.[0-9]+[!-~]*")
# The banner as it appears in raw bytes: prefix, then a release-looking word.
BANNER_RE = re.compile(re.escape(BANNER_PREFIX) + rb"([0-9]+\.[0-9]+[!-~]*)")

IKCONFIG_START = b"IKCFG_ST"
IKCONFIG_END = b"IKCFG_ED"
# The start marker is immediately followed by a gzip member (deflate method 8); requiring
# those bytes too avoids matching the marker text anywhere else.
_IKCONFIG_RE = re.compile(re.escape(IKCONFIG_START) + rb"\x1f\x8b\x08")

# Refuse to inflate more than this: real vmlinux images are tens of MiB, and the input may
# be hostile (a decompression bomb must not exhaust memory).
MAX_DECOMPRESSED_BYTES = 1 << 30

# lib/decompress_unlz4.c: the kernel uses lz4's legacy frame, a magic followed by blocks
# of (u32 compressed size, data), each inflating to at most 8 MiB.
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK_BYTES = 8 << 20
# zstd's default decoder window limit (128 MiB) is below what `zstd -22 --ultra`, which
# the kernel build uses, may need; allow the format's maximum.
ZSTD_MAX_WINDOW_BYTES = 1 << 31
ZSTD_FEED_BYTES = 64 << 10


class CodecUnavailableError(MkspawnError):
    """The payload's compression has no decoder in this Python environment."""

    code = "codec-unavailable"


@dataclass(frozen=True, slots=True)
class EmbeddedConfig:
    """The kernel's built-in ``.config``, or None with the reason it could not be read."""

    text: str | None
    reason: str  # where it was found, or why it was not


def _optional_module(name: str, compression: Compression, package: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise CodecUnavailableError(
            f"{compression} payload: Python module {name!r} is not installed",
            hint=f"pip install {package}",
        ) from e


def _too_big(compression: Compression) -> FormatError:
    return FormatError(
        f"{compression} payload inflates beyond {MAX_DECOMPRESSED_BYTES >> 20} MiB",
        offset=0,
    )


def _inflate_stdlib(blob: bytes, compression: Compression) -> bytes:
    decoder: zlib._Decompress | lzma.LZMADecompressor | bz2.BZ2Decompressor
    if compression is Compression.GZIP:
        decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    elif compression is Compression.XZ:
        decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    elif compression is Compression.LZMA:
        decoder = lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
    else:
        decoder = bz2.BZ2Decompressor()
    try:
        out = decoder.decompress(blob, MAX_DECOMPRESSED_BYTES)
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as e:
        raise FormatError(f"{compression} payload: {e}", offset=0) from e
    if not decoder.eof:
        if len(out) >= MAX_DECOMPRESSED_BYTES:
            raise _too_big(compression)
        raise FormatError(
            f"{compression} payload: stream is truncated", offset=len(blob)
        )
    # Whatever follows the stream (the kernel build appends the inflated size as a u32)
    # is ignored, as the kernel's own decompressors ignore it.
    return out


def _inflate_zstd(blob: bytes) -> bytes:
    zstd = _optional_module("zstandard", Compression.ZSTD, "zstandard")
    # zstandard's one-shot and incremental decoders take no output limit, so feed the
    # input in slices and stop once the output passes the cap.
    decoder = zstd.ZstdDecompressor(
        max_window_size=ZSTD_MAX_WINDOW_BYTES
    ).decompressobj()
    chunks: list[bytes] = []
    total = 0
    try:
        for pos in range(0, len(blob), ZSTD_FEED_BYTES):
            chunk: bytes = decoder.decompress(blob[pos : pos + ZSTD_FEED_BYTES])
            total += len(chunk)
            if total > MAX_DECOMPRESSED_BYTES:
                raise _too_big(Compression.ZSTD)
            chunks.append(chunk)
            if decoder.eof:
                break
    except zstd.ZstdError as e:
        raise FormatError(f"zstd payload: {e}", offset=0) from e
    if not decoder.eof:
        raise FormatError("zstd payload: stream is truncated", offset=len(blob))
    return b"".join(chunks)


def _inflate_lz4_legacy(blob: bytes, block: ModuleType) -> bytes:
    chunks: list[bytes] = []
    total = 0
    pos = 4
    while pos + 4 <= len(blob):
        (size,) = struct.unpack_from("<I", blob, pos)
        if size == LZ4_LEGACY_MAGIC:  # another legacy stream concatenated
            pos += 4
            continue
        if pos + 4 == len(blob):
            break  # the u32 inflated size the kernel build appends after the stream
        if size == 0 or pos + 4 + size > len(blob):
            raise FormatError(
                f"lz4 payload: block of {size} bytes does not fit the remaining "
                f"{len(blob) - pos - 4}",
                offset=pos,
            )
        try:
            chunk: bytes = block.decompress(
                blob[pos + 4 : pos + 4 + size], uncompressed_size=LZ4_LEGACY_BLOCK_BYTES
            )
        except block.LZ4BlockError as e:
            raise FormatError(f"lz4 payload: block: {e}", offset=pos) from e
        total += len(chunk)
        if total > MAX_DECOMPRESSED_BYTES:
            raise _too_big(Compression.LZ4)
        chunks.append(chunk)
        pos += 4 + size
    return b"".join(chunks)


def _inflate_lz4(blob: bytes) -> bytes:
    if int.from_bytes(blob[:4], "little") == LZ4_LEGACY_MAGIC:
        return _inflate_lz4_legacy(
            blob, _optional_module("lz4.block", Compression.LZ4, "lz4")
        )
    frame = _optional_module("lz4.frame", Compression.LZ4, "lz4")
    decoder = frame.LZ4FrameDecompressor()
    try:
        out: bytes = decoder.decompress(blob, max_length=MAX_DECOMPRESSED_BYTES + 1)
    except RuntimeError as e:  # python-lz4 reports frame errors as RuntimeError
        raise FormatError(f"lz4 payload: {e}", offset=0) from e
    if len(out) > MAX_DECOMPRESSED_BYTES:
        raise _too_big(Compression.LZ4)
    if not decoder.eof:
        raise FormatError("lz4 payload: frame is truncated", offset=len(blob))
    return out


def decompress(blob: bytes, compression: Compression) -> bytes:
    """Inflate a kernel payload; FormatError if corrupt, CodecUnavailableError if this
    environment cannot decode ``compression``."""
    if compression is Compression.NONE:
        return blob
    if compression in (
        Compression.GZIP,
        Compression.XZ,
        Compression.LZMA,
        Compression.BZIP2,
    ):
        return _inflate_stdlib(blob, compression)
    if compression is Compression.ZSTD:
        return _inflate_zstd(blob)
    if compression is Compression.LZ4:
        return _inflate_lz4(blob)
    if compression is Compression.LZO:
        raise CodecUnavailableError(
            "lzo payload: no LZO (lzop) decoder is available to Python here",
            hint="rebuild the kernel with another CONFIG_KERNEL_* compression",
        )
    raise FormatError(f"payload: unrecognised magic {blob[:6].hex()}", offset=0)


def decompress_payload(data: bytes) -> bytes:
    """The vmlinux inside a bzImage (an ELF file for any x86 kernel)."""
    header = parse_setup_header(data)
    blob = payload_bytes(data, header)
    return decompress(blob, identify_compression(blob))


def _release_from(banner_or_version: bytes) -> str | None:
    match = RELEASE_RE.match(banner_or_version)
    return match.group(0).decode("ascii") if match else None


def _search_banner(data: bytes) -> str | None:
    match = BANNER_RE.search(data)
    return match.group(1).decode("ascii") if match else None


def _vaddr_to_offset(elf: ELFFile, vaddr: int) -> int | None:
    for segment in elf.iter_segments("PT_LOAD"):
        start = segment["p_vaddr"]
        if start <= vaddr < start + segment["p_filesz"]:
            return int(segment["p_offset"] + (vaddr - start))
    return None


def _elf_release(data: bytes) -> str | None:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    try:
        elf = ELFFile(io.BytesIO(data))
        symtab = elf.get_section_by_name(".symtab")
        if isinstance(symtab, SymbolTableSection):
            for symbol in symtab.get_symbol_by_name("linux_banner") or ():
                offset = _vaddr_to_offset(elf, symbol["st_value"])
                if offset is None:
                    continue
                banner = data[offset : offset + BANNER_MAX_LEN]
                if banner.startswith(BANNER_PREFIX):
                    release = _release_from(banner[len(BANNER_PREFIX) :])
                    if release:
                        return release
        rodata = elf.get_section_by_name(".rodata")
        if rodata is not None and rodata["sh_type"] != "SHT_NOBITS":
            return _search_banner(rodata.data())
    except elfnote.pyelftools_errors():
        # A damaged symbol table or section header is not fatal: the caller falls back
        # to scanning the raw bytes for the banner.
        return None
    return None


def _banner_release(data: bytes) -> str | None:
    if elfnote.is_elf(data):
        return _elf_release(data) or _search_banner(data)
    return _search_banner(data)


def kernel_release(data: bytes) -> str:
    """The release (``uname -r``) of a bzImage, ELF vmlinux or raw kernel image."""
    found: str | None = None
    if data[0x202:0x206] == HDRS_MAGIC:
        found = parse_setup_header(data).release
        if found is None or RELEASE_RE.fullmatch(found.encode("ascii")) is None:
            try:
                vmlinux = decompress_payload(data)
            except CodecUnavailableError as e:
                raise FormatError(
                    f"kernel release: the setup header has no kernel_version and {e.message}",
                    offset=0x20E,
                ) from e
            found = _banner_release(vmlinux)
    else:
        found = _banner_release(data)
    if not found:
        raise FormatError(f"kernel release: no {BANNER_PREFIX.decode()!r} banner found")
    return found


def _config_from(kernel: bytes, where: str) -> EmbeddedConfig:
    match = _IKCONFIG_RE.search(kernel)
    if match is None:
        return EmbeddedConfig(
            None, f"CONFIG_IKCONFIG is not built in (no IKCFG_ST in {where})"
        )
    start = match.start() + len(IKCONFIG_START)
    decoder = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        text = decoder.decompress(kernel[start:], MAX_DECOMPRESSED_BYTES)
    except zlib.error as e:
        raise FormatError(f"IKCFG_ST: embedded config gzip: {e}", offset=start) from e
    if not decoder.eof:
        raise FormatError(
            "IKCFG_ST: embedded config gzip stream is truncated", offset=start
        )
    if not decoder.unused_data.startswith(IKCONFIG_END):
        raise FormatError(
            "IKCFG_ST: gzip stream is not followed by IKCFG_ED", offset=start
        )
    try:
        config = text.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(
            f"IKCFG_ST: embedded config is not UTF-8: {e.reason}", offset=start
        ) from e
    return EmbeddedConfig(config, f"IKCFG_ST at offset {match.start()} of {where}")


def embedded_config(data: bytes) -> EmbeddedConfig:
    """The ``.config`` built into the kernel, or None with a reason (not built in, or the
    payload's codec is unavailable).  Corrupt data raises FormatError."""
    if data[0x202:0x206] == HDRS_MAGIC:
        header = parse_setup_header(data)
        try:
            vmlinux = decompress_payload(data)
        except CodecUnavailableError as e:
            return EmbeddedConfig(None, e.message)
        return _config_from(vmlinux, f"the decompressed {header.compression} payload")
    return _config_from(data, "the image")
