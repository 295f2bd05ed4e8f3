"""zstd compresses with worker threads, and the bytes depend on neither the number of
workers nor how the writer feeds the stream: initramfs builds stay reproducible from a
1-CPU builder to a large one."""

from __future__ import annotations

import io
import random

import pytest
import zstandard

from mkimage.initramfs.compress import ZSTD_LEVEL, compressing
from mkimage.recipe.model import Compression


@pytest.fixture(scope="module")
def data() -> bytes:
    """40 MiB, compressible but not trivially: several of zstd's multithreaded jobs."""
    rng = random.Random(15)
    words = [rng.randbytes(rng.randrange(3, 12)) for _ in range(4000)]
    out = bytearray()
    while len(out) < 40 << 20:
        out += b" ".join(rng.choices(words, k=4096))
        out += rng.randbytes(2048)
    return bytes(out[: 40 << 20])


def through_the_stage(data: bytes, chunk: int) -> bytes:
    sink = io.BytesIO()
    with compressing(Compression.ZSTD, sink) as stream:  # type: ignore[arg-type]
        for start in range(0, len(data), chunk):
            stream.write(data[start:start + chunk])
    return sink.getvalue()


def test_output_is_the_same_for_any_worker_count_and_any_feeding(data: bytes) -> None:
    ours = through_the_stage(data, 4 << 20)
    assert through_the_stage(data, 777_777) == ours
    for workers in (1, 2, 4):
        sink = io.BytesIO()
        cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, threads=workers)
        with cctx.stream_writer(sink, closefd=False) as stream:
            stream.write(data)
        assert sink.getvalue() == ours, f"{workers} workers"
    assert zstandard.ZstdDecompressor().decompressobj().decompress(ours) == data
