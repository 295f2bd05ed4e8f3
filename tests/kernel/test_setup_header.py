"""Decoders for kernel image formats: the x86 setup header, the arm64 Image header, and
the bzImage payload (release string and embedded .config)."""

from __future__ import annotations

import bz2
import gzip
import importlib
import lzma
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from mkimage.errors import FormatError
from mkimage.kernel.arm64_image import parse_arm64_header
from mkimage.kernel.release import (
    LZ4_LEGACY_BLOCK_BYTES,
    LZ4_LEGACY_MAGIC,
    decompress,
    decompress_payload,
    embedded_config,
    kernel_release,
)
from mkimage.kernel.setup_header import (
    XLF_CAN_BE_LOADED_ABOVE_4G,
    XLF_KERNEL_64,
    Compression,
    identify_compression,
    is_pe,
    parse_setup_header,
)

BzImageFactory = Callable[..., bytes]
# python-lz4 ships no type information; import it as a plain module.
lz4_block = importlib.import_module("lz4.block")
lz4_frame = importlib.import_module("lz4.frame")

# --- setup header ------------------------------------------------------------------------


def test_debian_kernel_setup_header(
    debian_kernel: Path, debian_kernel_bytes: bytes
) -> None:
    hdr = parse_setup_header(debian_kernel_bytes)
    assert hdr.has_hdrs
    assert hdr.boot_flag == 0xAA55
    assert hdr.version >= 0x020F and hdr.protocol == "2.15"
    assert hdr.cmdline_size == 2047  # COMMAND_LINE_SIZE - 1 on x86
    assert hdr.kernel_alignment == 0x200000
    assert (
        hdr.xloadflags & XLF_KERNEL_64 and hdr.xloadflags & XLF_CAN_BE_LOADED_ABOVE_4G
    )
    assert hdr.pref_address == 0x1000000
    assert hdr.init_size > len(debian_kernel_bytes)  # decompression needs more room
    assert hdr.compression in (Compression.ZSTD, Compression.LZ4, Compression.XZ)
    assert hdr.payload_file_offset + hdr.payload_length <= len(debian_kernel_bytes)
    assert hdr.release == debian_kernel.name.removeprefix("vmlinuz-")
    assert is_pe(debian_kernel_bytes)  # Debian builds with the EFI stub


def test_synthetic_setup_header_fields(synthetic_bzimage: bytes) -> None:
    hdr = parse_setup_header(synthetic_bzimage)
    assert (hdr.setup_sects, hdr.setup_size) == (3, 2048)
    assert (hdr.version, hdr.loadflags, hdr.xloadflags) == (0x020F, 0x01, 0x03)
    assert hdr.kernel_version == "9.8.7-synthetic (tester@example) #1 SMP"
    assert hdr.release == "9.8.7-synthetic"
    assert hdr.compression is Compression.GZIP
    assert (hdr.payload_offset, hdr.payload_file_offset) == (0x40, 2048 + 0x40)
    assert not is_pe(synthetic_bzimage)


def test_setup_sects_zero_means_four(synthetic_bzimage: bytes) -> None:
    data = bytearray(synthetic_bzimage)
    data[0x1F1] = 0
    hdr = parse_setup_header(bytes(data))
    assert hdr.setup_sects == 4 and hdr.setup_size == 5 * 512


def test_short_input_is_a_format_error() -> None:
    with pytest.raises(FormatError, match="setup header: need") as err:
        parse_setup_header(bytes(0x200))
    assert err.value.offset == 0x200


@pytest.mark.parametrize(
    ("pointer", "string", "offset", "message"),
    [
        (0x7000, None, 0x20E, "beyond"),
        (0x200, b"x" * 600, 0x400, "no NUL"),
        (0x200, b"6.1\xff\0", 0x403, "not ASCII"),
    ],
    ids=["out-of-range", "unterminated", "not-ascii"],
)
def test_bad_kernel_version_pointer(
    synthetic_bzimage: bytes,
    pointer: int,
    string: bytes | None,
    offset: int,
    message: str,
) -> None:
    data = bytearray(synthetic_bzimage)
    struct.pack_into("<H", data, 0x20E, pointer)
    if string is not None:
        data[0x400 : 0x400 + len(string)] = string
    with pytest.raises(FormatError, match=message) as err:
        parse_setup_header(bytes(data))
    assert err.value.offset == offset


def test_zero_kernel_version_pointer_is_none(make_bzimage: BzImageFactory) -> None:
    hdr = parse_setup_header(make_bzimage(version_string=None))
    assert hdr.kernel_version is None and hdr.release is None


@pytest.mark.parametrize("kind", [c for c in Compression if c.magics()])
def test_identify_compression(kind: Compression) -> None:
    for magic in kind.magics():
        assert identify_compression(magic + b"rest") is kind


def test_identify_unknown_compression() -> None:
    assert identify_compression(b"\0\0\0\0") is Compression.UNKNOWN


def test_payload_beyond_file_is_unknown_not_an_error(synthetic_bzimage: bytes) -> None:
    data = bytearray(synthetic_bzimage)
    struct.pack_into("<I", data, 0x248, 0x100000)
    assert parse_setup_header(bytes(data)).compression is Compression.UNKNOWN


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"MZ" + bytes(0x3A) + struct.pack("<I", 0x40) + b"PE\0\0", True),
        (b"MZ" + bytes(0x3A) + struct.pack("<I", 0x40) + b"NE\0\0", False),
        (b"MZ" + bytes(0x3A) + struct.pack("<I", 0xFFFFFFF0), False),
        (b"MZ", False),
        (b"\x7fELF" + bytes(100), False),
    ],
    ids=["pe", "ne", "lfanew-out-of-range", "short", "elf"],
)
def test_is_pe(data: bytes, expected: bool) -> None:
    assert is_pe(data) is expected


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=4096))
def test_fuzz_setup_header_random_bytes(data: bytes) -> None:
    try:
        hdr = parse_setup_header(data)
    except FormatError as e:
        assert e.offset is not None
    else:
        assert hdr.setup_sects in range(1, 256)
    is_pe(data)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_setup_header_mutations(
    synthetic_bzimage: bytes, data: st.DataObject
) -> None:
    image = bytearray(synthetic_bzimage)
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0x1F0, 0x480))
        image[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(image)))
    try:
        parse_setup_header(bytes(image[:cut]))
    except FormatError as e:
        assert e.offset is not None


# --- arm64 Image header --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "big_endian", "page_size", "anywhere"),
    [
        (0x0A, False, 4096, True),
        (0x04, False, 16384, False),
        (0x07, True, 65536, False),
        (0, False, None, False),
    ],
)
def test_arm64_header_flags(
    make_arm64: Callable[..., bytes],
    flags: int,
    big_endian: bool,
    page_size: int | None,
    anywhere: bool,
) -> None:
    hdr = parse_arm64_header(make_arm64(flags=flags, image_size=0x1234000))
    assert hdr.image_size == 0x1234000 and hdr.text_offset == 0
    assert (hdr.big_endian, hdr.page_size, hdr.phys_base_anywhere) == (
        big_endian,
        page_size,
        anywhere,
    )
    assert hdr.pe_offset == 0x40


def test_arm64_header_errors(make_arm64: Callable[..., bytes]) -> None:
    with pytest.raises(FormatError, match="need 64 bytes") as err:
        parse_arm64_header(make_arm64()[:63])
    assert err.value.offset == 63
    bad = bytearray(make_arm64())
    bad[0x38:0x3C] = b"ARM\x65"
    with pytest.raises(FormatError, match="magic") as err:
        parse_arm64_header(bytes(bad))
    assert err.value.offset == 0x38


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=128))
def test_fuzz_arm64_header(data: bytes) -> None:
    try:
        parse_arm64_header(data)
    except FormatError:
        pass


# --- payload, release and embedded config ---------------------------------------------------

CONFIG_TEXT = "CONFIG_IKCONFIG=y\nCONFIG_MULTIKERNEL=y\n# CONFIG_KEXEC_SIG is not set\n"


def _fake_vmlinux(release: str = "9.8.7-synthetic", with_config: bool = True) -> bytes:
    """Bytes shaped like a vmlinux where it matters: a banner and the IKCONFIG blob."""
    blob = b"\x7fELF-not-really" + bytes(64)
    blob += b"Linux version " + release.encode() + b" (tester@example) #1 SMP\n\0"
    if with_config:
        blob += b"IKCFG_ST" + gzip.compress(CONFIG_TEXT.encode(), mtime=0) + b"IKCFG_ED"
    return blob + bytes(64)


def _lz4_legacy(raw: bytes) -> bytes:
    """lz4 legacy frame as `lz4 -l` (and so the kernel build) writes it."""
    out = struct.pack("<I", LZ4_LEGACY_MAGIC)
    for start in range(0, len(raw), LZ4_LEGACY_BLOCK_BYTES):
        block = lz4_block.compress(
            raw[start : start + LZ4_LEGACY_BLOCK_BYTES], store_size=False
        )
        out += struct.pack("<I", len(block)) + block
    return out


COMPRESSORS: dict[Compression, Callable[[bytes], bytes]] = {
    Compression.GZIP: lambda raw: gzip.compress(raw, mtime=0),
    Compression.XZ: lambda raw: lzma.compress(
        raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32
    ),
    Compression.LZMA: lambda raw: lzma.compress(raw, format=lzma.FORMAT_ALONE),
    Compression.BZIP2: bz2.compress,
    Compression.ZSTD: lambda raw: zstandard.ZstdCompressor(level=19).compress(raw),
    Compression.LZ4: _lz4_legacy,
    Compression.NONE: lambda raw: raw,
}


@pytest.mark.parametrize("compression", list(COMPRESSORS))
def test_config_and_release_through_each_codec(
    make_bzimage: BzImageFactory, compression: Compression
) -> None:
    inner = _fake_vmlinux()
    # The build appends the inflated size to compressed payloads only; an uncompressed
    # payload is the vmlinux ELF itself.
    trailer: int | None = len(inner)
    if compression is Compression.NONE:
        inner, trailer = inner.replace(b"\x7fELF-not-really", b"\x7fELF"), None
    image = make_bzimage(COMPRESSORS[compression](inner), size_append=trailer)
    hdr = parse_setup_header(image)
    assert hdr.compression is compression
    assert decompress_payload(image) == inner
    config = embedded_config(image)
    assert config.text == CONFIG_TEXT, config.reason
    assert f"decompressed {compression} payload" in config.reason
    assert kernel_release(image) == "9.8.7-synthetic"


def test_lz4_legacy_multi_block(make_bzimage: BzImageFactory) -> None:
    inner = _fake_vmlinux() + bytes(LZ4_LEGACY_BLOCK_BYTES + 12345) + b"tail"
    image = make_bzimage(_lz4_legacy(inner), size_append=len(inner))
    assert decompress_payload(image) == inner


def test_lz4_modern_frame() -> None:
    raw = _fake_vmlinux()
    packed = lz4_frame.compress(raw)
    assert decompress(packed, Compression.LZ4) == raw
    with pytest.raises(FormatError, match="truncated"):
        decompress(packed[:-8], Compression.LZ4)


def test_release_falls_back_to_payload_banner(make_bzimage: BzImageFactory) -> None:
    inner = _fake_vmlinux(release="5.4.3-from-payload")
    image = make_bzimage(gzip.compress(inner, mtime=0), version_string=None)
    assert kernel_release(image) == "5.4.3-from-payload"


def test_no_release_anywhere_is_a_format_error(make_bzimage: BzImageFactory) -> None:
    image = make_bzimage(gzip.compress(b"no banner here", mtime=0), version_string=None)
    with pytest.raises(FormatError, match="no 'Linux version ' banner"):
        kernel_release(image)
    with pytest.raises(FormatError):
        kernel_release(b"random bytes, no kernel")


def test_release_from_raw_image_banner() -> None:
    # An uncompressed image (e.g. arm64 Image) carries the banner in plain sight.
    assert (
        kernel_release(bytes(100) + b"Linux version 6.1.0-56-arm64 (x) #1\n")
        == "6.1.0-56-arm64"
    )


def test_config_absent_says_why(make_bzimage: BzImageFactory) -> None:
    image = make_bzimage(gzip.compress(_fake_vmlinux(with_config=False), mtime=0))
    config = embedded_config(image)
    assert config.text is None and "CONFIG_IKCONFIG is not built in" in config.reason


def test_missing_codec_gives_none_with_reason(
    make_bzimage: BzImageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = make_bzimage(COMPRESSORS[Compression.ZSTD](_fake_vmlinux()))
    monkeypatch.setitem(sys.modules, "zstandard", None)  # makes `import zstandard` fail
    config = embedded_config(image)
    assert config.text is None and "'zstandard' is not installed" in config.reason
    assert kernel_release(image) == "9.8.7-synthetic"  # the header still names it


def test_lzo_payload_has_no_codec(make_bzimage: BzImageFactory) -> None:
    image = make_bzimage(b"\x89LZO\x00\r\n\x1a\n" + bytes(64))
    config = embedded_config(image)
    assert config.text is None and "lzo" in config.reason


@pytest.mark.parametrize(
    "compression", [c for c in COMPRESSORS if c is not Compression.NONE]
)
def test_corrupt_payload_is_a_format_error(
    make_bzimage: BzImageFactory, compression: Compression
) -> None:
    packed = COMPRESSORS[compression](_fake_vmlinux() * 50)
    image = make_bzimage(packed[: len(packed) // 2])
    with pytest.raises(FormatError):
        decompress_payload(image)


def test_debian_kernel_release_and_payload(
    debian_kernel: Path, debian_kernel_bytes: bytes
) -> None:
    release = debian_kernel.name.removeprefix("vmlinuz-")
    assert kernel_release(debian_kernel_bytes) == release
    package_file = debian_kernel.parents[2] / "package"
    if package_file.exists():
        assert package_file.read_text().strip() == f"linux-image-{release}-unsigned"
    vmlinux = decompress_payload(debian_kernel_bytes)
    assert vmlinux.startswith(b"\x7fELF")
    assert kernel_release(vmlinux) == release  # from the banner in .rodata
    config = embedded_config(debian_kernel_bytes)
    # Debian's cloud kernels are built with "# CONFIG_IKCONFIG is not set".
    assert config.text is None and "CONFIG_IKCONFIG is not built in" in config.reason


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_release_and_config(data: bytes) -> None:
    for reader in (kernel_release, embedded_config):
        try:
            reader(data)
        except FormatError:
            pass
