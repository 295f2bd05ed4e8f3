"""Which Debian package each packed host file came from, for the SBOM.

Two dpkg-query calls per build whatever the number of files: ``-S`` with every path
(and its usrmerge twin) to find the owners, then ``-W`` with the owners for their
versions.  Only packages that own a packed file are reported, so the answer depends on
the host only through the packages actually packed.

The answer is remembered in the cache (two process starts cost more than the rest of a
no-op build) under a key made of each path's stat key and the stat keys of dpkg's own
state, which dpkg replaces on every install, removal, upgrade or diversion change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from mkimage.run import run
from mkimage.store import load_entry, locked, publish_entry, staging_dir, stat_key

log = logging.getLogger("mkspawn")

DPKG_TIMEOUT_S = 120
# Debian 12 merged /bin, /sbin and /lib* into /usr; dpkg still records each file where its
# package put it, so /usr/bin/busybox is found as /bin/busybox and the reverse.
MERGED_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# dpkg-query -S takes glob patterns; a path with these would match other files.
GLOB_CHARS = frozenset("*?[]\\")
# Bump when what a remembered answer stands for changes.
MEMO_VERSION = 1
MEMO_NAME = "packages.json"


@dataclass(frozen=True, slots=True, order=True)
class Package:
    name: str
    version: str
    arch: str


def usrmerge_twin(path: str) -> str | None:
    parts = PurePosixPath(path).parts
    if len(parts) > 2 and parts[1] in MERGED_DIRS:
        return str(PurePosixPath("/usr", *parts[1:]))
    if len(parts) > 3 and parts[1] == "usr" and parts[2] in MERGED_DIRS:
        return str(PurePosixPath("/", *parts[2:]))
    return None


# What dpkg rewrites (by rename) whenever its answers could change: the package status,
# the directory of file lists, the diversions.  run() passes no DPKG_ADMINDIR, so
# dpkg-query always reads these.
DPKG_STATE = tuple(Path("/var/lib/dpkg", name) for name in ("status", "info", "diversions"))


def owning_packages(paths: Iterable[str], *, cache_root: Path | None = None,
                    state: Sequence[Path] = DPKG_STATE) -> dict[str, Package]:
    """Absolute host path → the package owning it, for the paths some package owns.

    With ``cache_root`` the answer is remembered for these paths as they are now and
    dpkg's ``state`` as it is now."""
    wanted = sorted({p for p in paths if p.startswith("/") and not GLOB_CHARS & set(p)})
    if not wanted:
        return {}
    key = None if cache_root is None else memo_key(wanted, state)
    if cache_root is not None and key is not None:
        remembered = _remembered(cache_root, key)
        if remembered is not None:
            return _reported(*remembered)
    if shutil.which("dpkg-query") is None:
        log.warning("dpkg-query is not installed: the SBOM names no Debian package for the packed files")
        return {}
    found, ambiguous, complete = _query(wanted)
    if complete and cache_root is not None and key is not None:
        _remember(cache_root, key, found, ambiguous)
    return _reported(found, ambiguous)


def memo_key(paths: Sequence[str], state: Sequence[Path]) -> str | None:
    """What the answer for ``paths`` depends on; None when a path cannot be stat'ed (no
    file to pack: nothing worth remembering)."""
    try:
        files = [f"{p}|{stat_key('file', Path(p))}" for p in paths]
    except OSError:
        return None
    dpkg = [_state_key(s) for s in state]
    text = json.dumps([MEMO_VERSION, dpkg, files], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _state_key(path: Path) -> str:
    try:
        return stat_key("dpkg", path)
    except FileNotFoundError:
        return f"dpkg|{path}|missing"


def _query(wanted: list[str]) -> tuple[dict[str, Package], dict[str, list[str]], bool]:
    """The answer, and whether dpkg gave all of it (a failed run is never remembered)."""
    queries = {p: [p, *filter(None, [usrmerge_twin(p)])] for p in wanted}
    owners, owners_complete = _owners(sorted({q for qs in queries.values() for q in qs}))
    names = {owner for qs in queries.values() for q in qs for owner in owners.get(q, ())}
    versions, versions_complete = _versions(sorted(names))
    found: dict[str, Package] = {}
    ambiguous: dict[str, list[str]] = {}
    for path, qs in queries.items():
        candidates = sorted({versions[o] for q in qs for o in owners.get(q, ()) if o in versions})
        if len(candidates) == 1:
            found[path] = candidates[0]
        elif candidates:
            ambiguous[path] = [c.name for c in candidates]
    return found, ambiguous, owners_complete and versions_complete


def _reported(found: dict[str, Package], ambiguous: Mapping[str, list[str]]) -> dict[str, Package]:
    # Said on every build, remembered or not: the SBOM of each one lacks the package.
    for path, names in ambiguous.items():
        log.warning("%s: owned by several packages (%s); the SBOM names none", path, ", ".join(names))
    return found


def _memo_dir(cache_root: Path, key: str) -> Path:
    return cache_root / "dpkg" / key


def _remembered(cache_root: Path, key: str) -> tuple[dict[str, Package], dict[str, list[str]]] | None:
    out = _memo_dir(cache_root, key)
    if load_entry(out, key, stage="initramfs") is None:  # re-hashes the remembered answer
        return None
    try:
        data = json.loads((out / MEMO_NAME).read_bytes())
        found = {path: Package(*fields) for path, fields in data["found"].items()}
        return found, {path: list(names) for path, names in data["ambiguous"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remember(cache_root: Path, key: str, found: Mapping[str, Package], ambiguous: Mapping[str, list[str]]) -> None:
    """Best effort: a cache that cannot be written costs the next build two dpkg runs."""
    out = _memo_dir(cache_root, key)
    data = {"found": {path: [p.name, p.version, p.arch] for path, p in sorted(found.items())},
            "ambiguous": dict(sorted(ambiguous.items()))}
    try:
        with locked(cache_root / "locks" / f"dpkg-{key}.lock", "the dpkg answers", stage="initramfs"):
            staging = staging_dir(out)
            (staging / MEMO_NAME).write_text(json.dumps(data, indent=1, sort_keys=True))
            publish_entry(staging, out, {"key": key})
    except OSError as e:
        log.warning("initramfs: could not remember the dpkg answers in %s: %s", out, e.strerror or e)


# dpkg-query's exit status 1 only means something was not found (a file the recipe made
# itself); anything else is a failure whose partial answer must not be remembered.
ANSWERED = (0, 1)


def _owners(paths: list[str]) -> tuple[Mapping[str, tuple[str, ...]], bool]:
    done = run(["dpkg-query", "-S", "--", *paths], stage="initramfs", timeout_s=DPKG_TIMEOUT_S, check=False)
    owners: dict[str, tuple[str, ...]] = {}
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith(("diversion by", "local diversion")):
            continue
        packages, sep, rest = line.partition(": /")
        if sep:
            owners["/" + rest] = tuple(p.strip() for p in packages.split(","))
    return owners, done.returncode in ANSWERED


def _versions(packages: list[str]) -> tuple[Mapping[str, Package], bool]:
    """``name`` or ``name:arch`` as -S printed it → its installed package."""
    if not packages:
        return {}, True
    done = run(["dpkg-query", "-W", "-f", "${Package}\t${Architecture}\t${Version}\n", "--", *packages],
               stage="initramfs", timeout_s=DPKG_TIMEOUT_S, check=False)
    by_name: dict[str, Package] = {}
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        name, arch, version = (line.split("\t") + ["", ""])[:3]
        if name and version:
            by_name[f"{name}:{arch}"] = Package(name, version, arch)
            by_name.setdefault(name, Package(name, version, arch))
    return {p: by_name[p] for p in packages if p in by_name}, done.returncode in ANSWERED
