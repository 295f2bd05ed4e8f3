"""`mkspawn reproduce`: rebuild a bundle from its provenance and compare, component by component.

The recipe is the one the provenance records (resolved, paths relative to the recipe's
directory), or one the user gives, which must resolve to the same thing.  Before
anything is built, every recorded input that can be found on disk is hashed and
compared, so a changed patch is named at once instead of after a kernel compile.  The
rebuild uses a fresh, empty cache by default: a cached kernel would only prove that the
cache agrees with itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mkimage import assets
from mkimage.bundle.attestations import read_envelope
from mkimage.bundle.container import BundleContents, BundleHead, iter_component
from mkimage.bundle.manifest import MANIFEST_MEMBER, PROVENANCE_MEMBER, Manifest, Role
from mkimage.bundle.provenance import RecipeParameters, Statement
from mkimage.bundle.verify import opened_bundle
from mkimage.digests import file_sha256
from mkimage.errors import FormatError, InputError, MkspawnError, VerifyError
from mkimage.evidence import resolved_recipe
from mkimage.initramfs.reader import read_initramfs
from mkimage.kernel.kconfig import config_values
from mkimage.pipeline import build_bundle
from mkimage.recipe.docs import render_toml
from mkimage.recipe.load import load_recipe
from mkimage.recipe.model import Recipe

log = logging.getLogger("mkspawn")

MAX_LISTED = 12  # differences listed per component; the count says how many more


class NotReproducedError(VerifyError):
    code = "not-reproduced"


@dataclass(frozen=True, slots=True)
class ComponentResult:
    path: str
    equal: bool
    detail: str  # what differs ("" when equal)

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "equal": self.equal, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class ReproduceReport:
    bundle: Path
    recipe: str  # "recorded" or the recipe given
    cache_dir: str  # "fresh" or the cache used
    results: tuple[ComponentResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.equal for r in self.results)

    def to_dict(self) -> dict[str, object]:
        return {"bundle": str(self.bundle), "ok": self.ok, "recipe": self.recipe, "cache": self.cache_dir,
                "components": [r.to_dict() for r in self.results]}


@dataclass(frozen=True, slots=True)
class _Recorded:
    manifest: Manifest
    manifest_bytes: bytes
    statement: Statement
    envelope_payload: bytes


def _read_recorded(path: Path) -> _Recorded:
    with opened_bundle(path) as (_f, contents):
        head = BundleHead(contents.manifest_bytes, contents.manifest, contents.signatures, contents.provenance)
        envelope, statement = read_envelope(path, head)
    return _Recorded(contents.manifest, contents.manifest_bytes, statement, envelope.payload)


def reproduce_bundle(bundle: Path, *, recipe_path: Path | None = None, recipe_dir: Path | None = None,
                     cache_root: Path | None = None) -> ReproduceReport:
    """Rebuild ``bundle`` and compare.  ``recipe_dir`` is where the recorded recipe's
    relative paths are resolved (the directory the original recipe was in; default the
    current one); ``cache_root`` None means a fresh temporary cache."""
    recorded = _read_recorded(bundle)
    params = recorded.statement.recipe
    with _recipe(params, recipe_path, recipe_dir or Path.cwd()) as recipe:
        _check_same_recipe(params, recipe, recipe_path)
        _check_inputs(recorded.statement, recipe)
        with contextlib.ExitStack() as stack:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mkspawn-reproduce-")))
            cache = cache_root if cache_root is not None else work / "cache"
            log.info("reproduce: rebuilding %s with %s cache %s", bundle, "a fresh" if cache_root is None else "the",
                     cache)
            rebuilt = work / "rebuilt.mkb"
            # The recorded spelling: the recipe was checked to name the same files, and the
            # provenance (and the recipe input's digest) must record what the original did.
            build_bundle(recipe, rebuilt, cache_root=cache, params=params)
            results = _compare(bundle, rebuilt, recorded)
    return ReproduceReport(bundle, str(recipe_path) if recipe_path else "recorded",
                           "fresh" if cache_root is None else str(cache_root), results)


@contextlib.contextmanager
def _recipe(params: RecipeParameters, given: Path | None, recipe_dir: Path) -> Iterator[Recipe]:
    if given is not None:
        recipe = load_recipe(given)
        assert recipe.path is not None
        # The recipe's file name is no part of what it builds; the recorded name keeps the manifest equal.
        yield dataclasses.replace(recipe, path=recipe.path.parent / params.name)
        return
    # Written beside where the original recipe was, so its relative paths resolve as they did.
    try:
        fd, name = tempfile.mkstemp(dir=recipe_dir, prefix=".mkspawn-reproduce-", suffix=".toml")
    except OSError as e:
        raise InputError(f"{recipe_dir}: cannot write the recorded recipe there: {e.strerror}",
                         code="unreadable-input") from None
    temp = Path(name)
    try:
        with open(fd, "w", encoding="utf-8") as f:
            f.write(render_toml(dict(params.resolved)))
        recipe = load_recipe(temp, env={})
    except MkspawnError as e:
        # The temp file's name means nothing to the user; the recorded recipe and its directory do.
        raise InputError(f"the recorded recipe {params.name}, resolved in {recipe_dir}: {e.message}",
                         code=e.code) from None
    finally:
        temp.unlink(missing_ok=True)
    yield dataclasses.replace(recipe, path=recipe_dir.absolute() / params.name)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(value, Mapping) and value:
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list) and value:
        for i, v in enumerate(value):
            out.update(_flatten(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = value
    return out


def _differences(recorded: Any, rebuilt: Any) -> list[str]:
    a, b = _flatten(recorded), _flatten(rebuilt)
    return [f"{key}: recorded {_show(a.get(key))}, now {_show(b.get(key))}"
            for key in sorted(set(a) | set(b)) if a.get(key) != b.get(key)]


def _show(value: Any) -> str:
    text = "unset" if value is None else json.dumps(value)
    return text if len(text) <= 40 else text[:39] + "…"


def _check_same_recipe(params: RecipeParameters, recipe: Recipe, given: Path | None) -> None:
    """Settings must be equal; a path may be spelled differently if it names the same bytes
    (``../kernel/x.config`` in one checkout is ``builtin:kernel/x.config`` in another)."""
    assert recipe.path is not None
    recipe_dir = recipe.path.parent
    recorded, now = _flatten(dict(params.resolved)), _flatten(resolved_recipe(recipe))
    diffs = []
    for key in sorted(set(recorded) | set(now)):
        a, b = recorded.get(key), now.get(key)
        if a == b or (isinstance(a, str) and isinstance(b, str) and _same_file(a, b, recipe_dir)):
            continue
        diffs.append(f"{key}: recorded {_show(a)}, now {_show(b)}")
    if diffs:
        where = given or "the recorded recipe"
        raise NotReproducedError(f"{where}: differs from the recorded recipe before anything is built: "
                                 f"{_limited(diffs)}", code="recipe-differs")


def _same_file(a: str, b: str, recipe_dir: Path) -> bool:
    first, second = _locate(a, recipe_dir), _locate(b, recipe_dir)
    return first is not None and second is not None and file_sha256(first) == file_sha256(second)


def _limited(items: list[str]) -> str:
    more = f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
    return "; ".join(items[:MAX_LISTED]) + more


def _candidates(recipe: Recipe) -> dict[str, Path]:
    """Input name → file, for the inputs a recipe names (by its own spelling and by base name)."""
    assert recipe.path is not None
    found: dict[str, Path] = {}

    def visit(value: Any) -> None:
        if isinstance(value, Mapping):
            for v in value.values():
                visit(v)
        elif isinstance(value, list):
            for v in value:
                visit(v)
        elif isinstance(value, str):
            path = _locate(value, recipe.path.parent if recipe.path else Path.cwd())
            if path is not None:
                found.setdefault(value, path)
                found.setdefault(path.name, path)

    visit(resolved_recipe(recipe))
    return found


def _locate(text: str, recipe_dir: Path) -> Path | None:
    if assets.is_builtin(text):
        try:
            return assets.builtin_path(text)
        except MkspawnError:
            return None
    if "\n" in text or len(text) > 4096:
        return None
    path = Path(text) if text.startswith("/") else recipe_dir / text
    try:
        return path if path.is_file() else None
    except OSError:
        return None


def _check_inputs(statement: Statement, recipe: Recipe) -> None:
    """Hash every recorded input that can be found without building and compare."""
    assert recipe.path is not None
    files = _candidates(recipe)
    diffs = []
    for kind, name, sha in statement.inputs:
        if kind == "recipe":
            continue
        # Prebuilt images are named <role>/<file name>.
        path = files.get(name) or (files.get(name.partition("/")[2]) if kind == "prebuilt" else None)
        if path is None and name.startswith("mkspawn:"):
            path = _locate(assets.SCHEME + name.removeprefix("mkspawn:"), recipe.path.parent)
        if path is None and name.startswith("/"):
            path = _locate(name, recipe.path.parent)
        if path is None:
            continue  # made by the build (build:, cache:) or found only by building
        now = file_sha256(path)
        if now != sha:
            diffs.append(f"{kind} {name}: recorded sha256 {sha[:16]}…, {path} has {now[:16]}…")
    if diffs:
        raise NotReproducedError(f"an input differs from the recorded one before anything is built: "
                                 f"{_limited(diffs)}", code="input-differs")


# ---- comparison ---------------------------------------------------------------------

def _compare(original: Path, rebuilt: Path, recorded: _Recorded) -> tuple[ComponentResult, ...]:
    with opened_bundle(original) as (f1, c1), opened_bundle(rebuilt) as (f2, c2):
        new = {c.path: c for c in c2.manifest.components}
        results = []
        for c in recorded.manifest.components:
            other = new.pop(c.path, None)
            if other is None:
                results.append(ComponentResult(c.path, False, "not in the rebuilt bundle"))
            elif other.sha256 == c.sha256:
                results.append(ComponentResult(c.path, True, ""))
            else:
                results.append(ComponentResult(c.path, False, _component_diff(c.role, (f1, c1), (f2, c2), c.path)))
        results += [ComponentResult(path, False, "only in the rebuilt bundle") for path in sorted(new)]
        manifest_diffs = _differences(json.loads(c1.manifest_bytes), json.loads(c2.manifest_bytes))
        results.append(ComponentResult(MANIFEST_MEMBER, not manifest_diffs, _limited(manifest_diffs)))
        payload = read_envelope(rebuilt, BundleHead(c2.manifest_bytes, c2.manifest, (), c2.provenance))[0].payload
        statement_diffs = _differences(json.loads(recorded.envelope_payload), json.loads(payload))
        results.append(ComponentResult(PROVENANCE_MEMBER, not statement_diffs, _limited(statement_diffs)))
    return tuple(results)


Opened = tuple[BinaryIO, BundleContents]


def _data(opened: Opened, path: str) -> bytes:
    f, contents = opened
    return b"".join(iter_component(f, contents, path))


def _component_diff(role: Role, a: Opened, b: Opened, path: str) -> str:
    old, new = _data(a, path), _data(b, path)
    detail = f"sha256 {_sha(old)[:16]}… recorded, {_sha(new)[:16]}… rebuilt"
    try:
        if role is Role.INITRD:
            return f"{detail}; files differ: {_limited(_initrd_diff(old, new)) or 'none (only the archive bytes)'}"
        if role is Role.CONFIG:
            return f"{detail}; options differ: {_limited(_config_diff(old, new)) or 'none (only comments)'}"
    except (FormatError, MkspawnError) as e:
        return f"{detail} ({e.message})"
    return detail


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _initrd_files(data: bytes) -> dict[str, tuple[int, int, int, str]]:
    files = {}
    for segment in read_initramfs(data):
        for m in segment.members:
            name = m.name.decode("utf-8", "replace")
            files[f"{name}" if segment.index == 0 else f"{name} (segment {segment.index})"] = (
                m.mode, m.uid, m.gid, _sha(m.data))
    return files


def _initrd_diff(old: bytes, new: bytes) -> list[str]:
    a, b = _initrd_files(old), _initrd_files(new)
    out = []
    for name in sorted(set(a) | set(b)):
        if name not in b:
            out.append(f"{name} (only recorded)")
        elif name not in a:
            out.append(f"{name} (only rebuilt)")
        elif a[name] != b[name]:
            what = "contents" if a[name][3] != b[name][3] else "mode/owner"
            out.append(f"{name} ({what})")
    return out


def _config_diff(old: bytes, new: bytes) -> list[str]:
    a = config_values(old.decode("utf-8", "replace"))
    b = config_values(new.decode("utf-8", "replace"))
    return [f"CONFIG_{k}: {a.get(k, 'unset')} → {b.get(k, 'unset')}" for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k)]
