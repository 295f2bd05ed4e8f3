"""Care of the cache root: what it holds, and removing what was used least recently.

The stages own their corners of the cache (mkimage/kernel/cache.py lists the kernel's);
this module only knows where each kind of entry lives and which lock its producer holds
while writing it.  An entry's last use is its directory's mtime: a publish renames the
finished entry into place, and every cache hit touches it (``store.mark_used``).

Removal never races a producer: the entry's lock is taken without waiting (held: in
use, skipped), the entry is renamed to ``trash/`` under that lock, and deleted after
it is released, so no reader ever sees half an entry.  A hit does not lock, so an entry
used within ``IN_USE_GRACE_S`` counts as in use too: its reader may still be copying.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mkimage.errors import UsageError
from mkimage.store import remove_tree, try_locked

IN_USE_GRACE_S = 600
TRASH = "trash"
STAGING_SUFFIX = ".staging"


@dataclass(frozen=True, slots=True)
class Area:
    kind: str
    parent: str  # relative to the root; each child is one entry
    lock: str | None = None  # lock file relative to the root, with {name}
    prefix: str = ""
    # A source tree that builds read while holding only their own build lock.
    tree: bool = False


# Sources first: a patched tree is a hardlink copy of one, so its own size is what its
# patches changed, and the shared bytes count where they came from.
AREAS = (
    Area("kernel", "kernel/out", "locks/build-{name}.lock"),
    Area("kernel-build", "kernel/build", "locks/build-{name}.lock"),
    Area("source-tree", "kernel/src", "locks/src-{name}.lock", tree=True),
    Area("patched-tree", "kernel/patched", "locks/patched-{name}.lock", tree=True),
    Area("download", "downloads", "locks/download-{name}.lock"),
    Area("initramfs", "initramfs/out", "locks/initramfs-{name}.lock"),
    Area("host-kernel", "host-kernel/out", "locks/host-kernel-{name}.lock"),
    Area("host-initramfs", "check/host-initramfs", "check/locks/host-initramfs-{name}.lock"),
    Area("host-runtime", "check", prefix="pyruntime-"),
    Area("contract-memo", "contract"),
    Area("dpkg-memo", "dpkg", "locks/dpkg-{name}.lock"),
    Area("sbom", "sbom", "locks/sbom-{name}.lock"),
    Area("pulled", "pulled"),
)
CCACHE = "ccache"  # ccache keeps to its own limit (ccache -M), so prune leaves it alone
_NOT_ENTRIES = frozenset({"partial", "locks"})


@dataclass(slots=True)
class Usage:
    bytes: int = 0
    files: int = 0


def tree_usage(path: Path, seen: set[tuple[int, int]] | None = None) -> Usage:
    """Disk use of ``path`` (allocated blocks, like du), each inode counted once: a
    patched tree hardlinks most of its source's files."""
    seen = set() if seen is None else seen
    usage = Usage()

    def add(st: os.stat_result) -> None:
        ident = (st.st_dev, st.st_ino)
        if ident in seen:
            return
        seen.add(ident)
        usage.bytes += st.st_blocks * 512
        usage.files += 1

    try:
        add(path.lstat())
    except OSError:
        return usage
    if not path.is_dir() or path.is_symlink():
        return usage
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            with contextlib.suppress(OSError):
                add(os.lstat(os.path.join(dirpath, name)))
    return usage


@dataclass(frozen=True, slots=True)
class Entry:
    kind: str
    path: Path
    lock: Path | None
    bytes: int
    last_use: float
    # A staging directory whose producer is gone: removed by every prune.
    leftover: bool = False
    tree: bool = False

    def to_json(self, root: Path) -> dict[str, object]:
        return {"kind": self.kind, "path": self.path.relative_to(root).as_posix(), "bytes": self.bytes,
                "last_use": _iso(self.last_use), "leftover": self.leftover}


@dataclass(frozen=True, slots=True)
class KindStatus:
    kind: str
    entries: int
    bytes: int
    last_use: float | None

    def to_json(self) -> dict[str, object]:
        return {"kind": self.kind, "entries": self.entries, "bytes": self.bytes,
                "last_use": _iso(self.last_use) if self.last_use is not None else None}


@dataclass(frozen=True, slots=True)
class CacheStatus:
    root: Path
    kinds: tuple[KindStatus, ...]
    ccache_bytes: int
    other_bytes: int

    @property
    def total(self) -> int:
        return sum(k.bytes for k in self.kinds) + self.ccache_bytes + self.other_bytes

    def to_json(self) -> dict[str, object]:
        return {"root": str(self.root), "bytes": self.total, "kinds": [k.to_json() for k in self.kinds],
                "ccache_bytes": self.ccache_bytes, "other_bytes": self.other_bytes}


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def scan(root: Path, seen: set[tuple[int, int]] | None = None) -> list[Entry]:
    """Every entry under ``root``, with its size and last use."""
    seen = set() if seen is None else seen
    entries = []
    for area in AREAS:
        parent = root / area.parent
        try:
            children = sorted(parent.iterdir())
        except OSError:
            continue
        for path in children:
            name = path.name
            if not name.startswith(area.prefix) or name in _NOT_ENTRIES or (area.prefix == "" and name.startswith(".")):
                continue
            leftover = name.endswith(STAGING_SUFFIX)
            key = name.removesuffix(STAGING_SUFFIX)
            lock = root / area.lock.format(name=key) if area.lock else None
            try:
                last_use = path.lstat().st_mtime
            except OSError:
                continue
            usage = tree_usage(path, seen)
            entries.append(Entry(area.kind, path, lock, usage.bytes, last_use, leftover, area.tree))
    return entries


def status(root: Path) -> CacheStatus:
    seen: set[tuple[int, int]] = set()
    entries = scan(root, seen)
    kinds: list[KindStatus] = []
    for area in AREAS:
        if any(k.kind == area.kind for k in kinds):
            continue
        mine = [e for e in entries if e.kind == area.kind]
        kinds.append(KindStatus(area.kind, len(mine), sum(e.bytes for e in mine),
                                max((e.last_use for e in mine), default=None)))
    ccache = tree_usage(root / CCACHE, seen).bytes if (root / CCACHE).is_dir() else 0
    # Whatever is left (memos, lock files, test assets) once the entries are counted.
    other = tree_usage(root, seen).bytes if root.is_dir() else 0
    return CacheStatus(root, tuple(kinds), ccache, other)


@contextlib.contextmanager
def _try_lock(path: Path | None) -> Iterator[bool]:
    """The producer's lock, taken without waiting: False when someone holds it."""
    if path is None:
        yield True
        return
    with try_locked(path) as free:
        yield free


def _builds_running(root: Path) -> bool:
    """Whether any kernel build holds its lock (it reads a source tree it does not lock)."""
    for lock in sorted((root / "locks").glob("build-*.lock")):
        with _try_lock(lock) as free:
            if not free:
                return True
    return False


@dataclass(slots=True)
class PruneResult:
    removed: list[Entry] = field(default_factory=list)
    in_use: list[Entry] = field(default_factory=list)
    bytes_before: int = 0
    bytes_after: int = 0

    def to_json(self, root: Path) -> dict[str, object]:
        return {"root": str(root), "removed": [e.to_json(root) for e in self.removed],
                "in_use": [e.to_json(root) for e in self.in_use],
                "freed_bytes": sum(e.bytes for e in self.removed),
                "bytes_before": self.bytes_before, "bytes_after": self.bytes_after}


def prune(root: Path, *, keep_days: float | None = None, max_bytes: int | None = None,
          dry_run: bool = False, now: float | None = None) -> PruneResult:
    """Remove leftovers, then entries unused for ``keep_days``, then the least recently
    used until the entries fit in ``max_bytes``; never an entry in use."""
    now = time.time() if now is None else now
    result = PruneResult()
    if not root.is_dir():
        return result
    if not dry_run:
        remove_tree(root / TRASH)  # a prune that was killed while deleting
    entries = sorted(scan(root), key=lambda e: e.last_use)
    total = sum(e.bytes for e in entries)
    result.bytes_before = total
    cutoff = None if keep_days is None else now - keep_days * 86400
    builds_running: bool | None = None
    for entry in sorted(entries, key=lambda e: (not e.leftover, e.last_use)):
        wanted = (entry.leftover or (cutoff is not None and entry.last_use < cutoff)
                  or (max_bytes is not None and total > max_bytes))
        if not wanted:
            continue
        if entry.tree and builds_running is None:
            builds_running = _builds_running(root)
        if now - entry.last_use < IN_USE_GRACE_S or (entry.tree and builds_running) or not _remove(
                root, entry, dry_run):
            result.in_use.append(entry)
            continue
        result.removed.append(entry)
        total -= entry.bytes
    result.bytes_after = total
    return result


def _remove(root: Path, entry: Entry, dry_run: bool) -> bool:
    with _try_lock(entry.lock) as free:
        if not free:
            return False
        if dry_run:
            return True
        trash = root / TRASH / f"{entry.kind}-{entry.path.name}-{os.getpid()}"
        trash.parent.mkdir(exist_ok=True)
        try:
            entry.path.rename(trash)
        except FileNotFoundError:
            return True  # another prune got there first
    remove_tree(trash)
    return True


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``500M``, ``2G``, ``1.5GiB``, ``4096``: binary units, as du and ccache -M read them."""
    match = _SIZE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"cache prune: --max-size {text!r}: not a size (e.g. 500M, 20G, 1.5GiB)", code="bad-size")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
