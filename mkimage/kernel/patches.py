"""Patch series: read them (a list or a quilt ``series`` file), digest them, apply them.

A series is applied onto a private hardlinked copy of the extracted tree.  GNU
``patch`` writes each patched file as a new file and renames it into place, so the
shared source tree behind the hardlinks is never modified (tests check this).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mkimage import progress
from mkimage.digests import file_sha256
from mkimage.errors import InputError, ToolError
from mkimage.kernel.cache import KernelCache, locked, remove_tree
from mkimage.run import run
from mkimage.store import mark_used

log = logging.getLogger("mkspawn")

PATCH_TIMEOUT_S = 600
COPY_TIMEOUT_S = 1800


@dataclass(frozen=True, slots=True)
class Patch:
    path: Path
    strip: int  # -p level
    sha256: str


@dataclass(frozen=True, slots=True)
class PatchSeries:
    patches: tuple[Patch, ...]

    @property
    def digest(self) -> str:
        """Covers content, order and strip levels; not file names (renaming changes nothing)."""
        h = hashlib.sha256()
        for p in self.patches:
            h.update(f"{p.strip} {p.sha256}\n".encode())
        return h.hexdigest()


def read_series(patches: Sequence[Path], series: Path | None) -> PatchSeries:
    """The patches to apply, in order, from ``kernel.patches`` or ``kernel.series``."""
    if patches and series is not None:
        raise InputError("[kernel] patches and series: give one or the other, not both", code="conflicting-keys")
    if series is None:
        return PatchSeries(tuple(_patch(p, 1) for p in patches))
    return PatchSeries(tuple(_patch(path, strip) for path, strip in parse_series(series)))


def parse_series(series: Path) -> list[tuple[Path, int]]:
    """A quilt series file: one patch per line, relative to the file, optional ``-pN``.

    Blank lines and ``#`` comments are skipped, as quilt does.
    """
    out: list[tuple[Path, int]] = []
    for lineno, raw in enumerate(series.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, *opts = line.split()
        strip = 1
        for opt in opts:
            m = re.fullmatch(r"-p\s*(\d+)", opt)
            if m is None:
                raise InputError(f"{series}:{lineno}: unsupported series option {opt!r} (only -pN)",
                                 code="bad-series")
            strip = int(m.group(1))
        path = series.parent / name
        if not path.is_file():
            raise InputError(f"{series}:{lineno}: no such patch: {path}", code="bad-series")
        out.append((path, strip))
    return out


def _patch(path: Path, strip: int) -> Patch:
    return Patch(path, strip, file_sha256(path))


def patched_tree(cache: KernelCache, source_tree: Path, source_digest: str, series: PatchSeries) -> Path:
    """The source tree with ``series`` applied, made once per (source, series) pair."""
    if not series.patches:
        return source_tree
    key = hashlib.sha256(f"{source_digest}\n{series.digest}".encode()).hexdigest()[:32]
    home = cache.patched_dir(key)
    tree = home / "tree"
    if tree.is_dir():
        mark_used(home)
        return tree
    with locked(cache.lock_path(f"patched-{key}"), "patching the kernel tree"):
        if tree.is_dir():
            return tree
        work = home / "patching"
        remove_tree(work)
        home.mkdir(parents=True, exist_ok=True)
        _copy_tree(source_tree, work)
        try:
            with progress.task("kernel: patch", total=len(series.patches), unit="patches") as task:
                for patch in series.patches:
                    apply_patch(work, patch)
                    task.advance()
        except BaseException:
            remove_tree(work)
            raise
        work.rename(tree)
    return tree


def _copy_tree(source_tree: Path, work: Path) -> None:
    """Hardlink copy (seconds for a kernel tree); a full copy if the tree is on another
    filesystem, as an in-place ``dir`` source may be."""
    try:
        run(["cp", "-al", source_tree, work], stage="kernel", timeout_s=COPY_TIMEOUT_S)
    except ToolError as e:
        if "cross-device" not in e.stderr_tail and "Invalid cross" not in e.stderr_tail:
            raise
        log.info("kernel: %s is on another filesystem; copying it", source_tree)
        remove_tree(work)
        run(["cp", "-a", "--reflink=auto", source_tree, work], stage="kernel", timeout_s=COPY_TIMEOUT_S)


def apply_patch(tree: Path, patch: Patch) -> None:
    log.info("kernel: applying %s", patch.path.name)
    argv: list[str | Path] = [
        "patch", f"-p{patch.strip}", "--batch", "--forward", "--no-backup-if-mismatch",
        "--reject-file=-", "-d", tree, "-i", patch.path,
    ]
    done = run(argv, stage="kernel", timeout_s=PATCH_TIMEOUT_S, check=False)
    if done.returncode == 0:
        return
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    raise ToolError(
        f"kernel: patch {patch.path} does not apply: {describe_failure(output)}",
        argv=[str(a) for a in argv],
        returncode=done.returncode,
        stderr_tail=output[-4000:],
        code="patch-failed",
    )


def describe_failure(output: str) -> str:
    """Condense GNU patch's report into 'file: hunk #N FAILED at L' style text."""
    problems: list[str] = []
    current = "?"
    for line in output.splitlines():
        if m := re.match(r"(?:patching|checking) file (.+)", line):
            current = m.group(1).strip("'")
        elif m := re.match(r"Hunk #(\d+) FAILED at (\d+)", line):
            problems.append(f"{current}: hunk #{m.group(1)} FAILED at line {m.group(2)}")
        elif "Reversed (or previously applied) patch detected" in line:
            problems.append(f"{current}: already applied (reversed patch detected)")
        elif line.startswith(("can't find file to patch", "No file to patch")):
            problems.append("a file it patches does not exist in the tree")
        elif "Only garbage was found" in line or "malformed patch" in line:
            problems.append(line.strip())
    if not problems:
        tail = [line for line in output.splitlines() if line.strip()]
        return tail[-1] if tail else "patch failed"
    unique = list(dict.fromkeys(problems))
    return "; ".join(unique)
