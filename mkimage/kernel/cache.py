"""The kernel stage's corner of the project cache: layout, locks and memos.

Everything lives under a cache root the caller chooses (normally
``$XDG_CACHE_HOME/mkspawn``), so tests and tools can point it elsewhere:

    downloads/<sha256>/<name>          verified source downloads
    downloads/partial/<sha256>.part    an interrupted download, resumed next time
    kernel/src/<digest>/tree           an extracted source, shared by every build of it
    kernel/patched/<digest>/tree       a hardlinked copy with a patch series applied
    kernel/build/<key>                 the O= directory of a build in progress
    kernel/out/<key>/                  finished outputs plus entry.json (with every file's sha256,
                                       re-checked on each hit: a damaged entry is rebuilt)
    kernel/memo/<sha256>               file digests and tool versions, keyed by stat
    ccache/                            CCACHE_DIR
    locks/*.lock                       flock files
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mkimage.digests import file_sha256
from mkimage.outputs import write_atomic
from mkimage.run import run, which

log = logging.getLogger("mkspawn")



@dataclass(frozen=True, slots=True)
class KernelCache:
    root: Path

    @property
    def downloads_dir(self) -> Path:
        return self.root / "downloads"

    @property
    def ccache_dir(self) -> Path:
        return self.root / "ccache"

    def src_dir(self, digest: str) -> Path:
        return self.root / "kernel" / "src" / digest

    def patched_dir(self, digest: str) -> Path:
        return self.root / "kernel" / "patched" / digest

    def build_dir(self, key: str) -> Path:
        return self.root / "kernel" / "build" / key

    def out_dir(self, key: str) -> Path:
        return self.root / "kernel" / "out" / key

    def lock_path(self, name: str) -> Path:
        return self.root / "locks" / f"{name}.lock"

    def memo_path(self, stat_key: str) -> Path:
        return self.root / "kernel" / "memo" / hashlib.sha256(stat_key.encode()).hexdigest()


@contextlib.contextmanager
def locked(path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` for the block.

    The kernel releases the lock when the process dies, so a crashed build never
    leaves a stale lock behind; the work it guarded is redone from scratch.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("kernel: waiting for another process working on %s", what)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


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


def _stat_key(kind: str, path: Path) -> str:
    real = path.resolve()
    st = real.stat()
    return f"{kind}|{real}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def memo_sha256(cache: KernelCache, path: Path) -> str:
    """sha256 of a (large) file, remembered per inode, size and times.

    A source tarball is 150 MB; hashing it on every no-op build would cost more than
    the rest of the cache lookup.  Any write to the file changes mtime or ctime, and
    then it is hashed again.
    """
    memo = cache.memo_path(_stat_key("sha256", path))
    with contextlib.suppress(OSError):
        known = memo.read_text().strip()
        if len(known) == 64:
            return known
    digest = file_sha256(path)
    write_atomic(memo, digest.encode())
    return digest


def tool_identity(cache: KernelCache, tool: str, *args: str) -> str:
    """The first line of ``tool --version``, remembered per binary.

    Probing runs the tool (a ``make --version`` is still a make run), so the answer is
    kept per resolved binary and a cache hit starts no process at all.
    """
    path = Path(which(tool))
    memo = cache.memo_path(_stat_key(f"version {' '.join(args)}", path))
    with contextlib.suppress(OSError):
        return memo.read_text()
    done = run([str(path), *(args or ("--version",))], stage="kernel", timeout_s=60, check=False)
    text = (done.stdout or done.stderr).decode("utf-8", "replace").strip()
    first = text.splitlines()[0] if text else "unknown"
    write_atomic(memo, first.encode())
    return first


def remove_tree(path: Path) -> None:
    """Remove a directory we own, including read-only files a build may have left."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)
