"""The streamed digests against hashlib over the same bytes, on both sides of
range_sha256's buffer size."""

from __future__ import annotations

import hashlib
import io
import random
from pathlib import Path

import pytest

from mkimage import digests

DATA = random.Random(5).randbytes(3 * digests.HASH_BUFFER + 12345)


@pytest.mark.parametrize(("offset", "size"), [
    (0, 0), (3, 100), (0, 2 * digests.HASH_BUFFER), (1, 2 * digests.HASH_BUFFER + 1), (7, len(DATA) - 7),
    (512, 3 * digests.HASH_BUFFER),
], ids=["empty", "small", "two-buffers", "two-buffers-and-a-byte", "to-the-end", "buffer-multiple"])
def test_range_sha256_is_hashlib_over_the_range(offset: int, size: int) -> None:
    assert digests.range_sha256(io.BytesIO(DATA), offset, size) == (
        hashlib.sha256(DATA[offset:offset + size]).hexdigest(), size)


@pytest.mark.parametrize("size", [100, 3 * digests.HASH_BUFFER], ids=["small", "several-buffers"])
def test_range_sha256_reports_a_file_that_ends_early(size: int) -> None:
    short = DATA[: size // 2]
    assert digests.range_sha256(io.BytesIO(short), 0, size) == (hashlib.sha256(short).hexdigest(), len(short))


def test_file_sha256(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(DATA)
    assert digests.file_sha256(path) == hashlib.sha256(DATA).hexdigest()


def test_read_bundle_catches_a_flipped_byte_deep_in_a_large_member() -> None:
    """The verify path (read_bundle) over a member many hash buffers long."""
    from mkimage.bundle.container import read_bundle, write_bundle
    from mkimage.bundle.manifest import Component, Manifest, Provenance, Role
    from mkimage.errors import FormatError

    initrd = b"070701" + DATA
    manifest = Manifest.build(
        recipe_name="t", recipe_version="1", arch="x86_64", abi_profile="none",  # type: ignore[arg-type]
        kernel_release="6.12.0",
        components=[Component(Role.INITRD, "initrd", len(initrd), hashlib.sha256(initrd).hexdigest(),
                              "application/x-cpio")],
        provenance=Provenance(source_date_epoch=0, mkspawn_version="t", tools={}, inputs=(), config_sha256=""),
    )
    out = io.BytesIO()
    write_bundle(out, manifest.to_bytes(), [], [("initrd", lambda: [initrd])], 0)
    good = out.getvalue()
    read_bundle(io.BytesIO(good))
    where = good.index(initrd) + len(initrd) - 10
    bad = bytearray(good)
    bad[where] ^= 0x80
    with pytest.raises(FormatError) as info:
        read_bundle(io.BytesIO(bytes(bad)))
    assert info.value.code == "digest-mismatch"
