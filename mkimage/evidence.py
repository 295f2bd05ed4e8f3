"""The build side of a bundle's supply-chain evidence: the SBOM member and the recipe
parameters the provenance records, assembled from what the pipeline planned.

The formats are pure (``bundle/sbom.py``, ``bundle/provenance.py``); this module is the
edge that asks dpkg which package each packed file came from and names every recipe
path so that no checkout, home or temp directory reaches the bundle.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mkimage import assets
from mkimage.artifacts import Artifact, Role
from mkimage.bundle.canon import canonical_json
from mkimage.bundle.manifest import Input, InputKind
from mkimage.bundle.provenance import RecipeParameters
from mkimage.bundle.sbom import SBOM_MEDIA_TYPE, SBOM_MEMBER, DebPackage, SbomFacts, SbomInput, SbomMember, make_sbom
from mkimage.initramfs.packages import owning_packages
from mkimage.recipe.load import parse_override
from mkimage.recipe.model import Recipe
from mkimage.recipe.settings import INTERNAL
from mkimage.store import load_entry, locked, publish_entry, staging_dir

log = logging.getLogger("mkspawn")

# Bump when what a remembered SBOM stands for changes.
SBOM_MEMO_VERSION = 1
# The distributions whose code decides the SBOM's bytes besides bundle/sbom.py.
SBOM_LIBRARIES = ("cyclonedx-python-lib", "py-serializable", "packageurl-python", "sortedcontainers")

# Host files under these are named by their absolute path: they name the same thing on
# every Debian host (a packed /bin/busybox).
SYSTEM_DIRS = tuple(Path(p) for p in ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc"))


def recipe_path_name(path: Path, recipe_dir: Path) -> str:
    """A recipe path as a recipe in ``recipe_dir`` would spell it, host-independently:
    relative to the recipe, ``builtin:<name>`` for mkspawn's shipped files, absolute
    for system files, else relative (with ``..``)."""
    real = path.resolve()
    if real.is_relative_to(recipe_dir):
        return real.relative_to(recipe_dir).as_posix()
    shipped = assets.builtin_name(real)
    if shipped is not None:
        return assets.SCHEME + shipped
    if any(path.is_relative_to(d) for d in SYSTEM_DIRS):
        return path.as_posix()
    return Path(os.path.relpath(real, recipe_dir)).as_posix()


def resolved_recipe(recipe: Recipe) -> dict[str, Any]:
    """The resolved recipe as loadable plain data (canonical-JSON-able: no None)."""
    assert recipe.path is not None
    recipe_dir = recipe.path.parent.resolve()

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            fields = ((f.name, plain(getattr(value, f.name))) for f in dataclasses.fields(value)
                      if not f.metadata.get(INTERNAL))
            return {k: v for k, v in fields if v is not None}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items() if v is not None}
        if isinstance(value, enum.Enum):
            return value.value
        if isinstance(value, Path):
            return recipe_path_name(value, recipe_dir)
        return value

    sections = plain(recipe)
    return {k: v for k, v in sections.items() if isinstance(v, dict)}


def recipe_parameters(recipe: Recipe, overrides: Sequence[str]) -> RecipeParameters:
    """The recipe as the provenance records it; overrides by key with their resolved value,
    so a path given on the command line is named as the recipe names its paths."""
    assert recipe.path is not None
    resolved = resolved_recipe(recipe)
    chosen = []
    for text in overrides:
        keys, _value = parse_override(text)
        node: Any = resolved
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        chosen.append(f"{'.'.join(map(str, keys))}={canonical_json(node).decode() if node is not None else ''}")
    return RecipeParameters(recipe.path.name, resolved, tuple(chosen))


def recipe_input(params: RecipeParameters) -> Input:
    """The recipe as a build input: the digest of its resolved form, so two spellings of
    one recipe (another extends chain, comments, a --set) are one input."""
    return Input(InputKind.RECIPE, params.name, hashlib.sha256(canonical_json(params.resolved)).hexdigest())


def sbom_artifact(recipe: Recipe, *, kernel_release: str, config_sha256: str, mkspawn_version: str,
                  members: Sequence[tuple[Artifact, str]], inputs: Sequence[Input], work_dir: Path,
                  cache_root: Path | None = None) -> Artifact:
    """Write the SBOM for the planned components (artifact, sha256) and inputs; with
    ``cache_root``, the dpkg answers and the document are remembered there."""
    epoch = recipe.metadata.source_date_epoch
    assert epoch is not None
    packages = owning_packages((i.name for i in inputs if i.kind in (InputKind.FILE, InputKind.PREBUILT)),
                               cache_root=cache_root)
    facts = SbomFacts(
        recipe_name=recipe.metadata.name,
        recipe_version=recipe.metadata.version,
        kernel_release=kernel_release,
        config_sha256=config_sha256,
        source_date_epoch=epoch,
        mkspawn_version=mkspawn_version,
        members=tuple(sorted((SbomMember(a.role.value, a.member, sha, a.media_type) for a, sha in members),
                             key=lambda m: m.path)),
        inputs=tuple(SbomInput(i.kind.value, i.name, i.sha256, _deb(packages.get(i.name))) for i in inputs),
    )
    path = work_dir / SBOM_MEMBER
    path.write_bytes(make_sbom(facts) if cache_root is None else _cached_sbom(facts, cache_root))
    return Artifact(Role.SBOM, SBOM_MEMBER, path, SBOM_MEDIA_TYPE)


def sbom_key(facts: SbomFacts) -> str:
    """Everything the SBOM's bytes depend on: every fact, the code that writes it and the
    versions of the libraries it writes with."""
    code = _file_digest(str(sys.modules[make_sbom.__module__].__file__))
    libraries = {name: _version(name) for name in SBOM_LIBRARIES}
    text = json.dumps([SBOM_MEMO_VERSION, code, libraries, dataclasses.asdict(facts)],
                      sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# Both fixed for the life of the process (per writer file); a system build asks once per spawn.
@functools.cache
def _file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.cache
def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return ""


def _cached_sbom(facts: SbomFacts, cache_root: Path) -> bytes:
    """Making the document costs more than the rest of a no-op build (cyclonedx's import
    alone), so it is kept as a store entry keyed by :func:`sbom_key`."""
    key = sbom_key(facts)
    out = cache_root / "sbom" / key
    if load_entry(out, key, stage="sbom") is not None:  # re-hashes the remembered bytes
        try:
            return (out / SBOM_MEMBER).read_bytes()
        except OSError:
            pass
    data = make_sbom(facts)
    try:  # best effort: a cache that cannot be written costs the next build time only
        with locked(cache_root / "locks" / f"sbom-{key}.lock", "the SBOM cache", stage="sbom"):
            staging = staging_dir(out)
            (staging / SBOM_MEMBER).write_bytes(data)
            publish_entry(staging, out, {"key": key})
    except OSError as e:
        log.warning("sbom: could not cache the SBOM in %s: %s", out, e.strerror or e)
    return data


def _deb(package: Any) -> DebPackage | None:
    return None if package is None else DebPackage(package.name, package.version, package.arch)
