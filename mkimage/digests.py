"""Content digests of files, streamed so a large kernel or initrd is never held in memory.

Files are read into one reused buffer and hashed in place (no bytes object per chunk,
no copy besides the kernel's into the buffer), so hashing runs at hashlib's own speed.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

# Small enough to stay in L2 between the read and the hash: on this 2-core host, 1 GB
# hashes in 1.10 s with 128 KiB, 1.27 s with 1 MiB and 1.27 s with a reader and a
# hashing thread (the data crosses cores), against openssl dgst's 1.24 s.
HASH_BUFFER = 128 << 10


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def range_sha256(f: BinaryIO, offset: int, size: int) -> tuple[str, int]:
    """The sha256 of ``size`` bytes at ``offset`` in ``f`` and how many were there (fewer
    only if the file ends early)."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(min(HASH_BUFFER, size)))
    f.seek(offset)
    done = 0
    while done < size:
        n = f.readinto(buffer[: min(HASH_BUFFER, size - done)])  # type: ignore[attr-defined]
        if not n:
            break
        digest.update(buffer[:n])
        done += n
    return digest.hexdigest(), done

