"""Content-addressed cache entries shared by the stages: locks, digests, atomic publishing.

An entry is a directory ``<root>/<area>/out/<key>/`` holding the files a stage produced
and an ``entry.json`` that records the key, whatever the stage wants to remember, and the
sha256 of every file in the entry.  It appears by one rename of a fully written, fsynced
staging directory, and every hit re-hashes its files against the record: a truncated or
bit-flipped entry is reported and rebuilt, never served.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mkimage.digests import file_sha256
from mkimage.outputs import write_atomic

log = logging.getLogger("mkspawn")

ENTRY_NAME = "entry.json"
DIGESTS_KEY = "sha256"  # in entry.json: relative path -> sha256 of every file of the entry
_UNDIGESTED = frozenset({ENTRY_NAME})


@contextlib.contextmanager
def locked(path: Path, what: str, *, stage: str = "kernel") -> Iterator[None]:
    """Hold an exclusive flock on ``path`` for the block.

    The kernel releases the lock when the process dies, so a crashed build never
    leaves a stale lock behind; the work it guarded is redone from scratch.
    """
    fd = _lock_fd(path)
    try:
        if not _lock_now(fd):
            log.info("%s: waiting for another process working on %s", stage, what)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


@contextlib.contextmanager
def try_locked(path: Path) -> Iterator[bool]:
    """The lock of ``locked`` if it is free now, without waiting: False while another
    process holds it (cache care skips what a running build is using)."""
    fd = _lock_fd(path)
    try:
        yield _lock_now(fd)
    finally:
        os.close(fd)  # closing drops the lock


def _lock_fd(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)


def _lock_now(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def digest_tree(root: Path, *, exclude: frozenset[str] = frozenset()) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative POSIX path, in sorted order.

    A symlink is recorded by its target, not followed, so a link swapped for another
    one is a change too.  ``exclude`` names top-level entries to leave out.
    """
    digests: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        dirnames.sort()
        names = sorted(filenames) + sorted(d for d in dirnames if (base / d).is_symlink())
        for name in names:
            path = base / name
            rel = path.relative_to(root).as_posix()
            if rel in exclude:
                continue
            digests[rel] = f"symlink:{os.readlink(path)}" if path.is_symlink() else file_sha256(path)
    return dict(sorted(digests.items()))


def tree_mismatches(root: Path, recorded: dict[str, str], *, exclude: frozenset[str] = frozenset()) -> list[str]:
    """What differs between ``root`` now and the digests recorded for it: one phrase per
    file, missing, extra or changed."""
    actual = digest_tree(root, exclude=exclude)
    problems = [f"{name} is missing" for name in recorded if name not in actual]
    problems += [f"{name} is not part of the entry" for name in actual if name not in recorded]
    problems += [f"{name} has sha256 {actual[name][:16]}…, recorded {digest[:16]}…"
                 for name, digest in recorded.items() if name in actual and actual[name] != digest]
    return problems


def fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` (and ``root`` itself) to disk, so a
    rename that publishes the tree never exposes names whose data a crash would lose."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                fsync_path(path)
        for name in dirnames:
            if not (Path(dirpath) / name).is_symlink():
                fsync_path(Path(dirpath) / name)
    fsync_path(root)


def fsync_path(path: Path) -> None:
    """fsync one file or directory (a directory's fsync makes its entries durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a directory we own, including read-only files a build may have left."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def stat_key(kind: str, path: Path) -> str:
    """What identifies a file's content without reading it: any write changes mtime or
    ctime (and ctime cannot be set back), so an equal key means equal bytes."""
    real = path.resolve()
    st = real.stat()
    return f"{kind}|{real}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def staging_dir(out: Path) -> Path:
    """A fresh, empty directory beside ``out`` to fill before :func:`publish_entry`."""
    staging = out.with_name(out.name + ".staging")
    remove_tree(staging)
    staging.mkdir(parents=True)
    return staging


def publish_entry(staging: Path, out: Path, entry: dict[str, Any]) -> None:
    """Record ``entry`` (with the digests of everything in ``staging``) and rename
    ``staging`` to ``out`` once it is all on disk.  Call it under the key's lock."""
    entry = {**entry, DIGESTS_KEY: digest_tree(staging, exclude=_UNDIGESTED)}
    write_atomic(staging / ENTRY_NAME, json.dumps(entry, indent=1, sort_keys=True).encode())
    # Producers write without fsync; flush before the rename publishes the files.
    fsync_tree(staging)
    remove_tree(out)
    staging.rename(out)
    fsync_path(out.parent)


def read_entry(out: Path, key: str) -> dict[str, Any] | None:
    """The recorded ``entry.json`` of ``out`` when it belongs to ``key``, unchecked."""
    try:
        entry = json.loads((out / ENTRY_NAME).read_text())
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) and entry.get("key") == key else None


def entry_damage(out: Path, entry: dict[str, Any]) -> list[str] | None:
    """What differs between the entry's files and their recorded digests (empty: intact);
    None when the entry records no digests at all."""
    recorded = entry.get(DIGESTS_KEY)
    if not isinstance(recorded, dict):
        return None
    return tree_mismatches(out, recorded, exclude=_UNDIGESTED)


def load_entry(out: Path, key: str, *, stage: str) -> dict[str, Any] | None:
    """The entry at ``out`` for ``key`` if it is there and intact, else None (a damaged
    one is reported, so the caller rebuilds it)."""
    entry = read_entry(out, key)
    if entry is None:
        return None
    problems = entry_damage(out, entry)
    if problems is None:
        return None
    if problems:
        log.warning("%s: cache entry %s is damaged (%s); building it again", stage, key[:16],
                    "; ".join(problems[:3]) + (" …" if len(problems) > 3 else ""))
        return None
    mark_used(out)
    return entry


def mark_used(path: Path) -> None:
    """Note that the cache entry at ``path`` served a hit: `mkspawn cache prune` removes
    the least recently used first, by the directory's mtime (a publish renames the entry
    into place, so it starts as the time the entry was made).  Best effort: an entry we
    may read but not touch is still served."""
    with contextlib.suppress(OSError):
        os.utime(path)
