"""Moving a large blob from a socket to a file with the work spread over two cores.

A pull's component bytes are received on one thread into a few reusable buffers, hashed
on the main thread (by the bundle writer), and written by another thread from the same
buffers (``hashlib``, ``recv_into`` and ``write`` all release the GIL on large buffers);
a fourth thread starts the file's write-back as it grows, so the fsync before the rename
waits for the last few MiB rather than the whole file.  Measured with bench/transfer.py
(200 MB): receiving, hashing, writing and flushing one after another was most of the
pull's time.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Generator, Iterator

BUFFER_SIZE = 1 << 20
BUFFER_COUNT = 8  # being filled, queued, being hashed, being written, and slack for jitter
WRITE_BEHIND_STEP = 32 << 20


class _Stop(Exception):
    """The consumer went away; the receiving thread unwinds through its ``with`` blocks."""


class BufferPool:
    """Fixed buffers handed from the receiving thread to the consumer and back: no
    allocation (and no fresh pages to fault in) per chunk."""

    def __init__(self, count: int = BUFFER_COUNT, size: int = BUFFER_SIZE) -> None:
        self._free: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        self._buffers = [bytearray(size) for _ in range(count)]
        for buffer in self._buffers:
            self._free.put(buffer)

    def take(self) -> bytearray:
        """A free buffer; raises ``_Stop`` once the pool is closed."""
        buffer = self._free.get()
        if buffer is None:
            self._free.put(None)  # for the next taker too
            raise _Stop
        return buffer

    def give(self, buffer: bytearray) -> None:
        self._free.put(buffer)

    def owns(self, buffer: object) -> bool:
        return any(buffer is b for b in self._buffers)

    def close(self) -> None:
        self._free.put(None)


_END = object()


def received_ahead(produce: Callable[[BufferPool], Iterator[memoryview]], pool: BufferPool) -> Generator[memoryview]:
    """Run ``produce`` on a thread; yield its chunks here, each a view of a ``pool`` buffer
    that its last user gives back (``SequentialWriter`` does once it has written it).

    An exception in the producer is raised here, in the consumer's thread.  When the
    consumer stops early (an error, Ctrl-C), the pool is closed: the producer stops at its
    next buffer and its own cleanup (closing the response) runs on its thread.
    """
    handed: queue.SimpleQueue[object] = queue.SimpleQueue()

    def run() -> None:
        chunks = produce(pool)
        try:
            for chunk in chunks:
                handed.put(chunk)
            handed.put(_END)
        except _Stop:
            pass
        except BaseException as e:  # handed to the consumer, who raises it
            handed.put(e)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=run, name="mkspawn-receive", daemon=True)
    thread.start()
    finished = False
    try:
        while True:
            item = handed.get()
            if item is _END:
                finished = True
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, memoryview)
            yield item
    finally:
        if not finished:
            # Not joined: it may be blocked in a recv for up to the read timeout; as a
            # daemon it ends with the process, and the pull is being abandoned anyway.
            pool.close()


class SequentialWriter:
    """``write`` for ``write_bundle`` that hands the bytes to a thread which writes them in
    order, so the main thread hashes the next chunk while this one is copied into the page
    cache.  A chunk that is a view of a ``pool`` buffer is written from it and the buffer
    given back; anything else (headers, padding) is copied first.  ``close`` waits for the
    last write and raises the first error; a failed write also fails the next ``write``."""

    def __init__(self, fd: int, pool: BufferPool, flusher: WriteBehind) -> None:
        self._fd, self._pool, self._flusher = fd, pool, flusher
        self._queue: queue.SimpleQueue[tuple[memoryview, bool] | None] = queue.SimpleQueue()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="mkspawn-write", daemon=True)
        self._thread.start()

    def write(self, data: bytes | memoryview) -> int:
        if self._error is not None:
            raise self._error
        pooled = isinstance(data, memoryview) and self._pool.owns(data.obj)
        view = data if pooled else memoryview(bytes(data))
        assert isinstance(view, memoryview)
        self._queue.put((view, pooled))
        return len(view)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            view, pooled = item
            try:
                if self._error is None:
                    while view:
                        view = view[os.write(self._fd, view):]
                    self._flusher.wrote(len(item[0]))
            except OSError as e:
                self._error = e
            finally:
                if pooled:
                    self._pool.give(item[0].obj)  # type: ignore[arg-type]  # owned by the pool

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


class WriteBehind:
    """Flushes a file being written from a helper thread every ``step`` bytes, so the disk
    writes while the download goes on.  ``close`` before the descriptor is closed."""

    def __init__(self, fd: int, step: int = WRITE_BEHIND_STEP) -> None:
        self._fd, self._step, self._pending = fd, step, 0
        self._wake = threading.Event()
        self._closing = False
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._run, name="mkspawn-write-behind", daemon=True)
        self._thread.start()

    def wrote(self, n: int) -> None:
        self._pending += n
        if self._pending >= self._step:
            self._pending = 0
            self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            try:
                os.fdatasync(self._fd)
            except OSError as e:  # raised by close(); the final fsync would fail the same way
                self._error = e
                return

    def close(self) -> None:
        self._closing = True
        self._wake.set()
        self._thread.join()
        if self._error is not None:
            raise self._error
