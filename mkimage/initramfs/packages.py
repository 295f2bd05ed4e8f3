"""Which Debian package each packed host file came from, for the SBOM.

Two dpkg-query calls per build whatever the number of files: ``-S`` with every path
(and its usrmerge twin) to find the owners, then ``-W`` with the owners for their
versions.  Only packages that own a packed file are reported, so the answer depends on
the host only through the packages actually packed.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

from mkimage.run import run

log = logging.getLogger("mkspawn")

DPKG_TIMEOUT_S = 120
# Debian 12 merged /bin, /sbin and /lib* into /usr; dpkg still records each file where its
# package put it, so /usr/bin/busybox is found as /bin/busybox and the reverse.
MERGED_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# dpkg-query -S takes glob patterns; a path with these would match other files.
GLOB_CHARS = frozenset("*?[]\\")


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


def owning_packages(paths: Iterable[str]) -> dict[str, Package]:
    """Absolute host path → the package owning it, for the paths some package owns."""
    wanted = sorted({p for p in paths if p.startswith("/") and not GLOB_CHARS & set(p)})
    if not wanted:
        return {}
    if shutil.which("dpkg-query") is None:
        log.warning("dpkg-query is not installed: the SBOM names no Debian package for the packed files")
        return {}
    queries = {p: [p, *filter(None, [usrmerge_twin(p)])] for p in wanted}
    owners = _owners(sorted({q for qs in queries.values() for q in qs}))
    names = {owner for qs in queries.values() for q in qs for owner in owners.get(q, ())}
    versions = _versions(sorted(names))
    found: dict[str, Package] = {}
    for path, qs in queries.items():
        candidates = sorted({versions[o] for q in qs for o in owners.get(q, ()) if o in versions})
        if len(candidates) == 1:
            found[path] = candidates[0]
        elif candidates:
            log.warning("%s: owned by several packages (%s); the SBOM names none", path,
                        ", ".join(c.name for c in candidates))
    return found


def _owners(paths: list[str]) -> Mapping[str, tuple[str, ...]]:
    # Exit status 1 only means some path has no owner (a file the recipe made itself).
    done = run(["dpkg-query", "-S", "--", *paths], stage="initramfs", timeout_s=DPKG_TIMEOUT_S, check=False)
    owners: dict[str, tuple[str, ...]] = {}
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        if line.startswith(("diversion by", "local diversion")):
            continue
        packages, sep, rest = line.partition(": /")
        if sep:
            owners["/" + rest] = tuple(p.strip() for p in packages.split(","))
    return owners


def _versions(packages: list[str]) -> Mapping[str, Package]:
    """``name`` or ``name:arch`` as -S printed it → its installed package."""
    if not packages:
        return {}
    done = run(["dpkg-query", "-W", "-f", "${Package}\t${Architecture}\t${Version}\n", "--", *packages],
               stage="initramfs", timeout_s=DPKG_TIMEOUT_S, check=False)
    by_name: dict[str, Package] = {}
    for line in done.stdout.decode("utf-8", "replace").splitlines():
        name, arch, version = (line.split("\t") + ["", ""])[:3]
        if name and version:
            by_name[f"{name}:{arch}"] = Package(name, version, arch)
            by_name.setdefault(name, Package(name, version, arch))
    return {p: by_name[p] for p in packages if p in by_name}
