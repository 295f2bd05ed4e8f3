"""Kernel sources: identify them cheaply, materialise them once.

``source_identity`` names a source by digest without unpacking anything (a cache hit
needs no more), ``materialise_source`` produces the read-only tree a build reads.
Tarballs and downloads are extracted once per digest into a stable path, so ccache
sees the same absolute paths from build to build.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mkimage import progress
from mkimage.digests import file_sha256
from mkimage.errors import InputError
from mkimage.kernel.cache import (
    KernelCache,
    locked,
    memo_sha256,
    remove_tree,
)
from mkimage.kernel.fetch import fetch_url
from mkimage.recipe.model import KernelSource
from mkimage.run import run
from mkimage.store import mark_used

log = logging.getLogger("mkspawn")

EXTRACT_TIMEOUT_S = 1800
# xz decompresses a multi-block stream (Debian's linux-source is 62 blocks of 24 MiB) on
# every core with -T0: the 1.5 GB tree unpacks in 14 s instead of 21 on 2 cores.  A
# single-block file, or too little memory, falls back to one thread; tar hands XZ_OPT
# to the xz it starts and other codecs ignore it.
EXTRACT_ENV = {"XZ_OPT": "-T0"}
GIT_TIMEOUT_S = 3600
_FULL_COMMIT = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")


@dataclass(frozen=True, slots=True)
class SourceIdentity:
    """What the cache key needs to know about a source."""

    kind: str  # "url", "tarball", "dir" or "git"
    name: str  # as the user gave it: URL, path, or "repo@rev"
    digest: str  # sha256 of the tarball; a stat fingerprint for dir; "git:<commit>" for git


@dataclass(frozen=True, slots=True)
class SourceTree:
    identity: SourceIdentity
    tree: Path  # the top of the kernel tree; never written to
    sha256: str  # content digest for provenance (for git: of `git archive` output)


def source_identity(source: KernelSource, *, cache_root: Path) -> SourceIdentity:
    """Identify ``source`` without downloading, extracting or (for a pinned commit) fetching."""
    cache = KernelCache(cache_root)
    if source.url is not None:
        assert source.sha256 is not None  # the recipe check requires it
        return SourceIdentity("url", source.url, source.sha256)
    if source.tarball is not None:
        digest = memo_sha256(cache, source.tarball)
        if source.sha256 is not None and digest != source.sha256:
            raise InputError(
                f"kernel source {source.tarball}: sha256 mismatch: expected {source.sha256}, got {digest}",
                code="checksum-mismatch",
            )
        return SourceIdentity("tarball", str(source.tarball), digest)
    if source.dir is not None:
        return SourceIdentity("dir", str(source.dir), tree_fingerprint(source.dir))
    if source.git is not None and source.rev is not None:
        commit = source.rev if _FULL_COMMIT.fullmatch(source.rev) else _resolve_rev(cache, source.git, source.rev)
        return SourceIdentity("git", f"{source.git}@{source.rev}", f"git:{commit}")
    raise InputError("kernel source: give one of url, tarball, dir or git", code="bad-source")


def materialise_source(
    source: KernelSource, identity: SourceIdentity, *, cache_root: Path, mirrors: Mapping[str, Path]
) -> SourceTree:
    cache = KernelCache(cache_root)
    if identity.kind == "dir":
        assert source.dir is not None
        return SourceTree(identity, source.dir, identity.digest)
    if identity.kind == "git":
        assert source.git is not None
        return _git_tree(cache, source.git, identity)
    if identity.kind == "url":
        assert source.url is not None
        tarball = fetch_url(source.url, identity.digest, cache_root=cache_root, mirrors=mirrors)
    else:
        assert source.tarball is not None
        tarball = source.tarball
    return SourceTree(identity, extract_tarball(cache, tarball, identity.digest), identity.digest)


def extract_tarball(cache: KernelCache, tarball: Path, digest: str) -> Path:
    """Unpack ``tarball`` once into ``kernel/src/<digest>/tree`` and return the tree.

    A tarball with a single top-level directory (linux-6.12/, linux-source-6.12/) has
    that directory become ``tree``, so the path does not depend on the tarball's name.
    """
    home = cache.src_dir(digest)
    tree = home / "tree"
    if tree.is_dir():
        mark_used(home)
        return tree
    with locked(cache.lock_path(f"src-{digest}"), f"extracting {tarball.name}"):
        if tree.is_dir():
            return tree
        tmp = home / "unpacking"
        remove_tree(tmp)
        tmp.mkdir(parents=True)
        log.info("kernel: extracting %s", tarball)
        # --no-same-owner: files belong to whoever builds, even when that is root.
        with progress.task(f"kernel: unpack {tarball.name}"):
            run(["tar", "-xf", tarball, "-C", tmp, "--no-same-owner"], stage="kernel", timeout_s=EXTRACT_TIMEOUT_S,
                env=EXTRACT_ENV)
        entries = list(tmp.iterdir())
        top = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp
        if not (top / "Makefile").is_file() or not (top / "Kconfig").is_file():
            remove_tree(tmp)
            raise InputError(f"kernel source {tarball}: no kernel tree inside (no top-level Makefile and Kconfig)",
                             code="bad-source")
        os.replace(top, tree)
        if top is not tmp:
            remove_tree(tmp)
    return tree


def tree_fingerprint(tree: Path) -> str:
    """A digest of every file's path, size and mtime under an in-place source tree.

    Hashing 1.5 GB of sources on each build would dwarf a cache hit; any edit changes
    the size or mtime of the edited file.
    """
    if not (tree / "Makefile").is_file() or not (tree / "Kconfig").is_file():
        raise InputError(f"kernel source {tree}: not a kernel tree (no Makefile and Kconfig)", code="bad-source")
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            h.update(f"{os.path.relpath(path, tree)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# ---- git ---------------------------------------------------------------------------

def _git_dir(cache: KernelCache, repo: str) -> Path:
    return cache.root / "kernel" / "git" / (hashlib.sha256(repo.encode()).hexdigest()[:24] + ".git")


def _git(git_dir: Path, *args: str, stdout_path: Path | None = None) -> str:
    done = run(["git", f"--git-dir={git_dir}", *args], stage="kernel", timeout_s=GIT_TIMEOUT_S,
               stdout_path=stdout_path)
    return done.stdout.decode("utf-8", "replace").strip()


def _fetch(cache: KernelCache, repo: str, rev: str) -> Path:
    git_dir = _git_dir(cache, repo)
    with locked(cache.lock_path(f"git-{git_dir.name}"), f"git {repo}"):
        if not (git_dir / "HEAD").is_file():
            run(["git", "init", "--bare", "--quiet", git_dir], stage="kernel", timeout_s=60)
        log.info("kernel: fetching %s %s", repo, rev)
        # A shallow fetch of one revision: a kernel's full history is gigabytes.
        _git(git_dir, "fetch", "--quiet", "--depth=1", repo, rev)
    return git_dir


def _resolve_rev(cache: KernelCache, repo: str, rev: str) -> str:
    git_dir = _fetch(cache, repo, rev)
    return _git(git_dir, "rev-parse", "FETCH_HEAD^{commit}")


def _git_tree(cache: KernelCache, repo: str, identity: SourceIdentity) -> SourceTree:
    commit = identity.digest.removeprefix("git:")
    git_dir = _git_dir(cache, repo)
    has_commit = (git_dir / "HEAD").is_file() and run(
        ["git", f"--git-dir={git_dir}", "cat-file", "-e", f"{commit}^{{commit}}"],
        stage="kernel", timeout_s=60, check=False,
    ).returncode == 0
    if not has_commit:
        _fetch(cache, repo, commit)
    archive = git_dir / f"{commit}.tar"
    # git archive is deterministic for a commit (mtimes come from the commit), so its
    # digest is a content digest of the tree that provenance can record.
    _git(git_dir, "archive", "--format=tar", commit, stdout_path=archive)
    try:
        digest = file_sha256(archive)
        tree = extract_tarball(cache, archive, digest)
    finally:
        archive.unlink(missing_ok=True)
    return SourceTree(identity, tree, digest)

