"""Content digests of files, streamed so a large kernel or initrd is never held in memory.

Files are read into one reused buffer and hashed in place (no bytes object per chunk,
no copy besides the kernel's into the buffer), so hashing runs at hashlib's own speed.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20
BUFFERS = 3  # one being read, one being hashed, one spare so neither waits


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def range_sha256(f: BinaryIO, offset: int, size: int) -> tuple[str, int]:
    """The sha256 of ``size`` bytes at ``offset`` in ``f`` and how many were there (fewer
    only if the file ends early).

    A large range is read into a few reused buffers while a worker thread hashes the one
    before (both drop the GIL), so the read costs no time beside the hash.
    """
    digest = hashlib.sha256()
    f.seek(offset)
    if size <= 2 * CHUNK:
        data = f.read(size)
        digest.update(data)
        return digest.hexdigest(), len(data)
    free: queue.Queue[memoryview] = queue.Queue()
    full: queue.Queue[tuple[memoryview, int] | None] = queue.Queue()
    for _ in range(BUFFERS):
        free.put(memoryview(bytearray(CHUNK)))

    def hash_filled() -> None:
        while (item := full.get()) is not None:
            buffer, n = item
            digest.update(buffer[:n])
            free.put(buffer)

    worker = threading.Thread(target=hash_filled, name="sha256", daemon=True)
    worker.start()
    done = 0
    try:
        while done < size:
            buffer = free.get()
            n = f.readinto(buffer[: min(CHUNK, size - done)])  # type: ignore[attr-defined]
            if not n:
                break
            full.put((buffer, n))
            done += n
    finally:
        full.put(None)
        worker.join()
    return digest.hexdigest(), done


class StreamSha256:
    """sha256 of a stream of chunks, hashed by a worker thread while the caller moves the
    next chunk (hashlib drops the GIL on large buffers): a download or a copy then costs
    the slower of hashing and I/O instead of both.

    ``update`` queues the chunk itself, so it must not change afterwards (bytes do not).
    At most ``depth`` chunks wait, bounding memory; ``close`` stops the worker early.
    """

    def __init__(self, depth: int = 8) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._digest = hashlib.sha256()
        self._worker = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._worker.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not None:
            self._digest.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)

    def hexdigest(self) -> str:
        self.close()
        return self._digest.hexdigest()

    def close(self) -> None:
        if self._worker.is_alive():
            self._queue.put(None)
            self._worker.join()
