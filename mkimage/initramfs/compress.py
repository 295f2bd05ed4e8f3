"""Streaming compressors in the exact variants the kernel's initramfs unpacker accepts,
the matching decompressors for the reader, and the choice of compression from a kernel
``.config``.

Magic numbers and Kconfig symbols: lib/decompress.c and usr/Kconfig (6.12).  Levels are
fixed so output depends only on the input bytes and the library versions, which
:func:`compressor_versions` reports for provenance.
"""

from __future__ import annotations

import contextlib
import gzip
import lzma
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, BinaryIO, cast

from mkimage.errors import FormatError, InputError
from mkimage.initramfs.newc import Writable
from mkimage.recipe.model import Compression

if TYPE_CHECKING:
    import zstandard


# The C bindings load only when a stage compresses or reads zstd/lz4, not at start-up.
def _zstd() -> ModuleType:
    import zstandard

    return zstandard


def _lz4() -> ModuleType:
    import lz4
    import lz4.block

    return cast(ModuleType, lz4)  # untyped package

GZIP_LEVEL = 9
XZ_PRESET = 6  # 8 MiB dictionary; the kernel's xz decoder allocates it dynamically
# From the measured size/time table in docs/initramfs-compression.md: the knee, where
# higher levels cost several times the time for a few per cent.  Any level up to 19 keeps
# the window at 8 MiB or less; --ultra levels need windows early decoders refuse.
ZSTD_LEVEL = 9
# Worker threads (one per CPU).  zstd's multithreaded output depends on the level and
# parameters only, never on the number of workers, so it stays reproducible across
# machines; only single-threaded mode (0 workers) would give different bytes.
ZSTD_THREADS = -1
LZ4_HC_LEVEL = 9

# lib/decompress_unlz4.c: legacy frame = this LE magic, then blocks of at most 8 MiB
# uncompressed, each as a LE u32 compressed length and a raw lz4 block.
LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK_BYTES = 8 * 1024 * 1024

# What auto picks, best first, when the kernel config allows it.
AUTO_ORDER = (Compression.ZSTD, Compression.XZ, Compression.LZ4, Compression.GZIP, Compression.NONE)
# Without a kernel config: gzip.  RD_GZIP is the oldest and most widely enabled
# decompressor, and gzip unpacks fastest under TCG (environment.md §9).
AUTO_WITHOUT_CONFIG = Compression.GZIP

KCONFIG_SYMBOL = {
    Compression.GZIP: "CONFIG_RD_GZIP",
    Compression.XZ: "CONFIG_RD_XZ",
    Compression.ZSTD: "CONFIG_RD_ZSTD",
    Compression.LZ4: "CONFIG_RD_LZ4",
}


@dataclass(frozen=True, slots=True)
class Magic:
    prefix: bytes
    name: str  # as lib/decompress.c names it
    compression: Compression | None  # None: the kernel knows it, this reader does not


# lib/decompress.c compressed_formats[]; the kernel looks at the first two bytes only.
MAGICS = (
    Magic(b"\x1f\x8b", "gzip", Compression.GZIP),
    Magic(b"\x1f\x9e", "gzip", Compression.GZIP),
    Magic(b"\xfd\x37", "xz", Compression.XZ),
    Magic(b"\x28\xb5", "zstd", Compression.ZSTD),
    Magic(b"\x02\x21", "lz4", Compression.LZ4),
    Magic(b"BZh", "bzip2", None),
    Magic(b"\x5d\x00", "lzma", None),
    Magic(b"\x89\x4c", "lzo", None),
)


# ---- choosing -----------------------------------------------------------------------

def kernel_decompressors(config_path: Path) -> set[Compression]:
    """The compressions a kernel built from this .config can unpack (none is always fine)."""
    try:
        text = config_path.read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise InputError(f"kernel config {config_path}: {e.strerror or e}", code="unreadable") from e
    enabled = set(re.findall(r"^(CONFIG_RD_[A-Z0-9]+)=y\s*$", text, flags=re.MULTILINE))
    return {Compression.NONE} | {c for c, symbol in KCONFIG_SYMBOL.items() if symbol in enabled}


def choose_compression(requested: Compression, kernel_config: Path | None) -> Compression:
    """Resolve ``auto`` and refuse what the kernel cannot unpack."""
    if kernel_config is None:
        return AUTO_WITHOUT_CONFIG if requested is Compression.AUTO else requested
    supported = kernel_decompressors(kernel_config)
    if requested is Compression.AUTO:
        return next(c for c in AUTO_ORDER if c in supported)
    if requested not in supported:
        usable = ", ".join(str(c) for c in AUTO_ORDER if c in supported)
        raise InputError(
            f"initramfs.compression = {requested}: the kernel config {config_label(kernel_config)} does not "
            f"set {KCONFIG_SYMBOL[requested]}=y, so the kernel could not unpack it (usable: {usable})",
            code="unsupported-compression",
            hint=f"set initramfs.compression to one of: {usable}, or auto",
        )
    return requested


def config_label(path: Path) -> str:
    return path.name if path.name != ".config" else str(path)


# ---- compressing ---------------------------------------------------------------------

class _Lz4LegacyWriter:
    """The legacy lz4 frame (`lz4 -l`), the only lz4 framing the kernel decodes."""

    def __init__(self, out: BinaryIO) -> None:
        self._out = out
        self._buf = bytearray()
        out.write(struct.pack("<I", LZ4_LEGACY_MAGIC))

    def write(self, data: bytes | bytearray, /) -> int:
        self._buf += data
        while len(self._buf) >= LZ4_LEGACY_BLOCK_BYTES:
            self._emit(bytes(self._buf[:LZ4_LEGACY_BLOCK_BYTES]))
            del self._buf[:LZ4_LEGACY_BLOCK_BYTES]
        return len(data)

    def flush(self) -> None:
        """Blocks are emitted whole; partial data waits for close()."""

    def close(self) -> None:
        if self._buf:
            self._emit(bytes(self._buf))
            self._buf.clear()

    def _emit(self, block: bytes) -> None:
        packed = _lz4().block.compress(block, mode="high_compression", compression=LZ4_HC_LEVEL, store_size=False)
        self._out.write(struct.pack("<I", len(packed)))
        self._out.write(packed)


@contextlib.contextmanager
def compressing(compression: Compression, out: BinaryIO) -> Iterator[Writable]:
    """A stream that compresses into ``out``; ``out`` itself stays open."""
    if compression is Compression.NONE:
        yield out
        return
    stream: gzip.GzipFile | lzma.LZMAFile | zstandard.ZstdCompressionWriter | _Lz4LegacyWriter
    if compression is Compression.GZIP:
        # mtime=0 and an empty name keep the header free of time and host paths (gzip -n).
        stream = gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=GZIP_LEVEL)
    elif compression is Compression.XZ:
        # The kernel's xz decoder only verifies CRC32 (or no) checks, as scripts/xz_wrap.sh knows.
        stream = lzma.LZMAFile(  # noqa: SIM115 - closed below, after the archive is written
            out, "wb", format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32, preset=XZ_PRESET)
    elif compression is Compression.ZSTD:
        cctx = _zstd().ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, threads=ZSTD_THREADS)
        stream = cctx.stream_writer(out, closefd=False)
    elif compression is Compression.LZ4:
        stream = _Lz4LegacyWriter(out)
    else:
        raise ValueError(f"no compressor for {compression}")
    # The zstandard stubs leave write() and flush() partly unannotated.
    yield cast(Writable, stream)
    stream.close()


def compressor_versions(compression: Compression) -> dict[str, str]:
    """Library versions that determine the compressed bytes, for provenance."""
    if compression is Compression.GZIP:
        return {"zlib": zlib.ZLIB_RUNTIME_VERSION, "gzip-level": str(GZIP_LEVEL)}
    if compression is Compression.XZ:
        return {"liblzma": _liblzma_version(), "xz-preset": str(XZ_PRESET)}
    if compression is Compression.ZSTD:
        return {"libzstd": ".".join(map(str, _zstd().ZSTD_VERSION)),
                "python-zstandard": _zstd().__version__, "zstd-level": str(ZSTD_LEVEL),
                "zstd-mode": "multithreaded"}
    if compression is Compression.LZ4:
        return {"liblz4": _lz4().library_version_string(), "python-lz4": _lz4().__version__,
                "lz4-hc-level": str(LZ4_HC_LEVEL)}
    return {}


def _liblzma_version() -> str:
    # The stdlib lzma module exposes no version; ask the library it links against (ctypes
    # only here: xz builds alone pay for its import).
    import ctypes

    try:
        lib = ctypes.CDLL("liblzma.so.5")
    except OSError:
        return "unknown"
    lib.lzma_version_string.restype = ctypes.c_char_p
    raw = lib.lzma_version_string()
    return raw.decode("ascii", "replace") if isinstance(raw, bytes) else "unknown"


# ---- decompressing (for the reader) --------------------------------------------------

def detect_magic(data: bytes | memoryview) -> Magic | None:
    head = bytes(data[:3])
    return next((m for m in MAGICS if head.startswith(m.prefix)), None)


def decompress_segment(compression: Compression, data: bytes, offset: int) -> tuple[bytes, int]:
    """Decompress one stream at the start of ``data``; return (plain bytes, bytes consumed)."""
    try:
        if compression is Compression.GZIP:
            return _finish(zlib.decompressobj(wbits=31), data, offset, "gzip")
        if compression is Compression.XZ:
            return _finish(lzma.LZMADecompressor(format=lzma.FORMAT_XZ), data, offset, "xz")
        if compression is Compression.ZSTD:
            return _finish(_zstd().ZstdDecompressor().decompressobj(), data, offset, "zstd")
        if compression is Compression.LZ4:
            return _unlz4_legacy(data, offset)
    except (zlib.error, lzma.LZMAError, _zstd().ZstdError, _lz4().block.LZ4BlockError) as e:
        raise FormatError(f"bad {compression} data: {e}", offset=offset) from e
    raise FormatError(f"cannot decompress {compression}", offset=offset)


def _finish(dec: zlib._Decompress | lzma.LZMADecompressor | zstandard.ZstdDecompressionObj,
            data: bytes, offset: int, label: str) -> tuple[bytes, int]:
    plain = dec.decompress(data)
    if not dec.eof:
        raise FormatError(f"truncated {label} stream", offset=offset)
    return plain, len(data) - len(dec.unused_data)


def _unlz4_legacy(data: bytes, offset: int) -> tuple[bytes, int]:
    """Mirror of the kernel's unlz4: repeated magics are skipped, a zero length or the end
    of input finishes the stream."""
    out = bytearray()
    pos = 4
    while len(data) - pos >= 4:
        (length,) = struct.unpack_from("<I", data, pos)
        if length == LZ4_LEGACY_MAGIC:
            pos += 4
            continue
        if length == 0:
            break
        pos += 4
        if length > len(data) - pos:
            raise FormatError(f"lz4 block of {length} bytes runs past the end", offset=offset + pos - 4)
        out += _lz4().block.decompress(data[pos:pos + length], uncompressed_size=LZ4_LEGACY_BLOCK_BYTES)
        pos += length
    return bytes(out), pos
