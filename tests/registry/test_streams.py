"""The threads of a pull's receive path: errors cross to the consumer, an abandoned
download stops its receiver, writes land in order and a failed write is not lost."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkimage.errors import RegistryError
from mkimage.registry.streams import BufferPool, SequentialWriter, WriteBehind, received_ahead

WAIT_S = 10


def numbered(pool: BufferPool, count: int, size: int = 1000) -> Iterator[memoryview]:
    for i in range(count):
        buffer = pool.take()
        buffer[:size] = bytes([i]) * size
        yield memoryview(buffer)[:size]


def test_chunks_arrive_in_order_and_the_producers_error_follows_them() -> None:
    pool = BufferPool(3, 1000)

    def produce(pool: BufferPool) -> Iterator[memoryview]:
        yield from numbered(pool, 5)
        raise RegistryError("registry: connection lost 4 times", code="transfer-interrupted")

    seen = []
    with pytest.raises(RegistryError, match="connection lost") as raised:
        for chunk in received_ahead(produce, pool):
            seen.append(chunk[0])
            pool.give(chunk.obj)  # type: ignore[arg-type]
    assert seen == [0, 1, 2, 3, 4]
    assert raised.value.code == "transfer-interrupted"


def test_an_abandoned_download_stops_its_receiver() -> None:
    pool = BufferPool(2, 1000)
    unwound = threading.Event()

    def produce(pool: BufferPool) -> Iterator[memoryview]:
        try:
            yield from numbered(pool, 1_000_000)
        finally:
            unwound.set()  # where the response is closed in the real producer

    chunks = received_ahead(produce, pool)
    next(chunks)  # the consumer keeps this buffer; the receiver fills the other, then waits
    chunks.close()  # as when hashing fails or Ctrl-C arrives
    assert unwound.wait(WAIT_S)


def test_writes_land_in_order_and_pool_buffers_come_back(tmp_path: Path) -> None:
    pool = BufferPool(2, 1000)
    path = tmp_path / "out"
    with path.open("wb") as f:
        flusher = WriteBehind(f.fileno(), step=1500)
        writer = SequentialWriter(f.fileno(), pool, flusher)
        expected = b""
        for i, chunk in enumerate(numbered(pool, 6)):  # 6 chunks from 2 buffers: each must come back
            header = f"header {i}".encode()
            writer.write(header)
            writer.write(chunk)
            expected += header + bytes(chunk)
        writer.close()
        flusher.close()
    assert path.read_bytes() == expected


def test_a_failed_write_is_raised_not_lost() -> None:
    pool = BufferPool(1, 1000)
    fd = os.open("/dev/full", os.O_WRONLY)
    try:
        flusher = WriteBehind(fd)
        writer = SequentialWriter(fd, pool, flusher)
        writer.write(b"x" * 100)
        with pytest.raises(OSError) as raised:
            for chunk in numbered(pool, 50):  # the pooled buffer still comes back after the failure
                writer.write(chunk)
            writer.close()
        assert raised.value.errno == errno.ENOSPC
        flusher.close()
    finally:
        os.close(fd)
