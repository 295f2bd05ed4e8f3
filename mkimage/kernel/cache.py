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
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

from mkimage.digests import file_sha256
from mkimage.outputs import write_atomic
from mkimage.run import run, which

# The generic entry machinery lives in mkimage/store.py; the kernel stage's modules
# import it from here along with the kernel layout.
from mkimage.store import digest_tree, fsync_path, fsync_tree, locked, remove_tree, stat_key, tree_mismatches

__all__ = ["KernelCache", "digest_tree", "fsync_path", "fsync_tree", "locked", "memo_sha256", "remove_tree",
           "tool_identity", "tree_mismatches"]

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


def memo_sha256(cache: KernelCache, path: Path) -> str:
    """sha256 of a (large) file, remembered per inode, size and times.

    A source tarball is 150 MB; hashing it on every no-op build would cost more than
    the rest of the cache lookup.  Any write to the file changes mtime or ctime, and
    then it is hashed again.
    """
    memo = cache.memo_path(stat_key("sha256", path))
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
    memo = cache.memo_path(stat_key(f"version {' '.join(args)}", path))
    with contextlib.suppress(OSError):
        return memo.read_text()
    done = run([str(path), *(args or ("--version",))], stage="kernel", timeout_s=60, check=False)
    text = (done.stdout or done.stderr).decode("utf-8", "replace").strip()
    first = text.splitlines()[0] if text else "unknown"
    write_atomic(memo, first.encode())
    return first
