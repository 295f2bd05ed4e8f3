"""Load a recipe: TOML → merged tables (extends, --set) → typed ``Recipe``.

Validation happens here, once; stages receive typed objects.  Every error names the
file, line and key it is about.

Merge rules for ``extends = "base.toml"`` (documented in docs/recipes.md): the base is
loaded first (recursively, cycles refused); tables merge key by key; any other value
in the extending recipe (string, number, boolean, array, array of tables) replaces
the base's value whole.  Relative paths are resolved against the file that set them.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import logging
import os
import re
import tomllib
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mkimage import assets
from mkimage.errors import InputError, Location, RecipeError, shown_path
from mkimage.recipe.locations import KeyLocations, KeyPath, nearest, scan_locations
from mkimage.recipe.model import SECTIONS, KeyRef, Recipe
from mkimage.recipe.settings import (
    INTERNAL,
    field_setting,
    is_section,
    optional_inner,
    run_table_check,
    section_fields,
    type_name,
)

EXTENDS_KEY = "extends"
MAX_EXTENDS_DEPTH = 16
DEFAULT_SOURCE_DATE_EPOCH = 0
log = logging.getLogger("mkspawn")

Locs = dict[KeyPath, Location]
Sources = dict[Path, list[str]]  # each recipe file's lines, for checks that need the literal text


def is_uri(value: str) -> bool:
    return re.match(r"^[a-z][a-z0-9+.-]*:", value) is not None and not re.match(r"^[A-Za-z]:[\\/]", value)


# ---- reading and merging --------------------------------------------------------------

def read_toml_file(path: Path, sources: Sources) -> tuple[dict[str, Any], Locs]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RecipeError(Location(path), None, "no such recipe file", code="no-such-file") from None
    except OSError as e:
        raise RecipeError(Location(path), None, f"cannot read recipe: {e.strerror or e}", code="unreadable") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        raise RecipeError(Location(path, raw.count(b"\n", 0, e.start) + 1), None,
                          f"invalid TOML: byte {raw[e.start]:#04x} in column {e.start - line_start + 1} is not "
                          "UTF-8", code="toml-syntax") from None
    sources[path] = text.splitlines()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        line = int(m.group(1)) if m else None
        message = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e)) or "invalid TOML"
        raise RecipeError(Location(path, line), None, f"invalid TOML: {message}", code="toml-syntax") from None
    lines = scan_locations(text)
    locs = {key: Location(path, line) for key, line in lines.items()}
    locs[()] = Location(path, None)
    return data, locs


def _merge(base: dict[str, Any], base_locs: Locs, top: dict[str, Any], top_locs: Locs, prefix: KeyPath = ()) -> None:
    """Merge ``top`` into ``base`` in place, carrying locations along."""
    for key, value in top.items():
        path = (*prefix, key)
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], base_locs, value, top_locs, path)
            continue
        base[key] = value
        for stale in [p for p in base_locs if p[: len(path)] == path]:
            del base_locs[stale]
        base_locs.update({p: loc for p, loc in top_locs.items() if p[: len(path)] == path})


def load_tree(path: Path, sources: Sources, chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], Locs]:
    path = Path(os.path.abspath(path))
    data, locs = read_toml_file(path, sources)
    extends = data.pop(EXTENDS_KEY, None)
    if extends is None:
        return data, locs
    loc = locs.get((EXTENDS_KEY,), Location(path))
    if not isinstance(extends, str) or not extends:
        raise RecipeError(loc, EXTENDS_KEY, f"expected a relative path string, got {extends!r}", code="bad-type")
    base_path = _builtin(extends, loc, EXTENDS_KEY) if assets.is_builtin(extends) else \
        Path(os.path.abspath(path.parent / extends))
    if base_path in chain or base_path == path:
        raise RecipeError(loc, EXTENDS_KEY, f"extends cycle through {shown_path(base_path)}", code="extends-cycle")
    if len(chain) >= MAX_EXTENDS_DEPTH:
        raise RecipeError(loc, EXTENDS_KEY, "extends chain too deep", code="extends-cycle")
    if not base_path.is_file():
        raise RecipeError(loc, EXTENDS_KEY, f"no such file: {shown_path(base_path)}", code="no-such-file")
    base, base_locs = load_tree(base_path, sources, (*chain, path))
    top_locs = {p: loc for p, loc in locs.items() if p and p[0] != EXTENDS_KEY}
    _merge(base, base_locs, data, top_locs)
    base_locs[()] = Location(path)
    return base, base_locs


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """``section.key=value`` → (path, value); the value is TOML if it parses, else a string."""
    key, sep, raw = text.partition("=")
    origin = Location(None, origin=f"--set {text}")
    if not sep or not key.strip():
        raise RecipeError(origin, None, "expected --set section.key=value", code="bad-override")
    path = tuple(part.strip() for part in key.split("."))
    if any(not part for part in path):
        raise RecipeError(origin, None, f"bad key path {key!r}", code="bad-override")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return path, value


def _apply_override(data: dict[str, Any], locs: Locs, text: str) -> None:
    path, value = parse_override(text)
    node = data
    for part in path[:-1]:
        child = node.setdefault(str(part), {})
        if not isinstance(child, dict):
            raise RecipeError(Location(None, origin=f"--set {text}"), ".".join(map(str, path)),
                              f"{part} is not a table", code="bad-override")
        node = child
    node[str(path[-1])] = value
    for stale in [p for p in locs if p[: len(path)] == path]:
        del locs[stale]
    locs[path] = Location(None, origin=f"--set {text}")


# ---- conversion to the typed model -------------------------------------------------

class Converter:
    def __init__(self, locs: Locs, sources: Sources, cwd: Path) -> None:
        self.where = KeyLocations(MappingProxyType(locs))
        self.sources = sources
        self.cwd = cwd

    def loc(self, path: KeyPath) -> Location:
        return self.where.of(path)

    def fail(self, path: KeyPath, message: str, code: str) -> RecipeError:
        return RecipeError(self.loc(path), _dotted(path), message, code=code)

    def base_dir(self, path: KeyPath) -> Path:
        loc = self.loc(path)
        return loc.file.parent if loc.file is not None else self.cwd

    def table(self, cls: type, value: Any, path: KeyPath) -> Any:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a table, got {_show(value)}", "bad-type")
        fields = {f.name: (f, tp) for f, tp in section_fields(cls) if not (cls is Recipe and f.name == "path")}
        for key in value:
            if key not in fields:
                raise self.fail((*path, key), unknown_key_message(key, list(fields)), "unknown-key")
        kwargs: dict[str, Any] = {}
        for name, (f, tp) in fields.items():
            sub = (*path, name)
            setting = None if is_section(tp) or cls is Recipe else field_setting(f)
            if name in value and setting is not None and setting.octal:
                converted = self.octal(value[name], sub)
            elif name in value:
                converted = self.value(tp, value[name], sub)
            elif is_section(tp):
                converted = self.table(tp, {}, sub)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise self.fail(path, f"missing required key '{name}'", "missing-key")
            else:
                continue
            message = setting.check(converted) if setting is not None and setting.check else None
            if message:
                raise self.fail(sub, message, "bad-value")
            kwargs[name] = converted
        table = cls(**kwargs)
        problem = run_table_check(table)
        if problem:
            key, message = problem
            raise self.fail((*path, key) if key else path, message, "bad-value")
        return table

    def octal(self, value: Any, path: KeyPath) -> int:
        """Permission bits: an int written in octal (or hex, or 0..7), or a string of octal
        digits.  TOML keeps no radix, so the literal is looked up in the recipe text."""
        if isinstance(value, str):
            if not re.fullmatch(r"(0o)?[0-7]{1,5}", value):
                raise self.fail(path, f"expected octal permission bits such as \"0755\", got {value!r}", "bad-value")
            return int(value.removeprefix("0o"), 8)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.fail(path, f"expected permission bits such as 0o755, got {_show(value)}", "bad-type")
        if value >= 8 and self._written_in_decimal(path, value):
            digits = str(value)
            like = f'0o{digits} or "0{digits}"' if set(digits) <= set("01234567") else 'such as 0o755 or "0755"'
            raise self.fail(path, f"{value} is a decimal integer ({value:#o}); write permission bits in octal, "
                            f"{like}", "bad-value")
        return value

    def _written_in_decimal(self, path: KeyPath, value: int) -> bool:
        loc = self.loc(path)
        if loc.origin is not None:
            text = loc.origin
        elif loc.file is not None and loc.line is not None:
            text = self.sources.get(loc.file, [])[loc.line - 1]
        else:
            return False
        literal = rf"(?<![\w-]){re.escape(str(path[-1]))}\s*=\s*\+?([0-9][0-9_]*)(?![\w.])"
        return any(int(m.group(1).replace("_", "")) == value for m in re.finditer(literal, _blank_strings(text)))

    def value(self, tp: Any, value: Any, path: KeyPath) -> Any:
        inner = optional_inner(tp)
        if inner is not None:
            return self.value(inner, value, path)
        origin = typing.get_origin(tp)
        if origin is list:
            (item,) = typing.get_args(tp)
            if not isinstance(value, list):
                raise self.fail(path, f"expected {type_name(tp)}, got {_show(value)}", "bad-type")
            return [self.value(item, v, (*path, i)) for i, v in enumerate(value)]
        if origin is dict:
            _, val_tp = typing.get_args(tp)
            if not isinstance(value, dict):
                raise self.fail(path, f"expected {type_name(tp)}, got {_show(value)}", "bad-type")
            return {str(k): self.value(val_tp, v, (*path, k)) for k, v in value.items()}
        if dataclasses.is_dataclass(tp) and isinstance(tp, type):
            return self.table(tp, value, path)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            choices = [m.value for m in tp]
            if not isinstance(value, str) or value not in choices:
                hint = _did_you_mean(str(value), choices)
                raise self.fail(path, f"expected {type_name(tp)}, got {_show(value)}{hint}", "bad-value")
            return tp(value)
        return self.scalar(tp, value, path)

    def scalar(self, tp: Any, value: Any, path: KeyPath) -> Any:
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            str: isinstance(value, str),
            Path: isinstance(value, str) and value != "",
            KeyRef: isinstance(value, str) and value != "",
        }.get(tp)
        if ok is None:
            raise TypeError(f"recipe field type {tp!r} has no converter")
        if not ok:
            raise self.fail(path, f"expected {_article(type_name(tp))}, got {_show(value)}", "bad-type")
        if "\0" in str(value):
            raise self.fail(path, "NUL character in string", "bad-value")
        if tp is Path:
            if assets.is_builtin(value):
                return _builtin(value, self.loc(path), _dotted(path))
            return Path(os.path.abspath(self.base_dir(path) / value))
        if tp is KeyRef:
            return KeyRef(value if is_uri(value) else os.path.abspath(self.base_dir(path) / value))
        return value


def _builtin(text: str, loc: Location, key: str) -> Path:
    try:
        return assets.builtin_path(text)
    except InputError as e:
        raise RecipeError(loc, key, e.message, code=e.code) from None


def _blank_strings(text: str) -> str:
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'', '""', text)


def _article(name: str) -> str:
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value) if isinstance(value, str) else str(value)


def _dotted(path: KeyPath) -> str:
    return ".".join(f"{p}" if isinstance(p, str) else f"[{p}]" for p in path).replace(".[", "[")


def _did_you_mean(key: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_key_message(key: str, choices: Sequence[str]) -> str:
    return f"unknown key '{key}'{_did_you_mean(key, choices)}"


# ---- the public entry point ----------------------------------------------------------

def load_recipe(
    path: Path,
    overrides: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    need_kernel: bool = True,
) -> Recipe:
    """Load, merge, override and validate a recipe; raise RecipeError on any problem.

    ``need_kernel=False`` is for verbs that build no kernel (`mkspawn initramfs`): the
    recipe may then leave [kernel] out.
    """
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    sources: Sources = {}
    if assets.is_builtin(str(path)):
        path = assets.builtin_path(str(path))
    data, locs = load_tree(Path(path), sources)
    for text in overrides:
        _apply_override(data, locs, text)
    conv = Converter(locs, sources, cwd)
    for key in data:
        if key not in SECTIONS:
            raise conv.fail((key,), unknown_key_message(key, [*SECTIONS, EXTENDS_KEY]), "unknown-key")
    if "metadata" not in data:
        raise conv.fail((), "missing required table [metadata]", "missing-key")
    recipe: Recipe = conv.table(Recipe, {**data}, ())
    recipe = _with_epoch(recipe, env, conv)
    validate_recipe(recipe, conv, need_kernel)
    initramfs = dataclasses.replace(recipe.initramfs, locations=conv.where)
    return dataclasses.replace(recipe, initramfs=initramfs, path=Path(os.path.abspath(path)))


def _with_epoch(recipe: Recipe, env: Mapping[str, str], conv: Converter) -> Recipe:
    if recipe.metadata.source_date_epoch is not None:
        return recipe
    raw = env.get("SOURCE_DATE_EPOCH", "")
    if raw == "":
        epoch = DEFAULT_SOURCE_DATE_EPOCH
    elif raw.isdigit() and int(raw) <= 0xFFFFFFFF:
        epoch = int(raw)
    else:
        raise RecipeError(Location(None, origin="$SOURCE_DATE_EPOCH"), None,
                          f"expected an integer 0..4294967295, got {raw!r}", code="bad-value")
    metadata = dataclasses.replace(recipe.metadata, source_date_epoch=epoch)
    return dataclasses.replace(recipe, metadata=metadata)


PREBUILT_EXCLUDES = ("init", "command", "files", "trees", "binaries", "nodes", "symlinks", "microcode", "compression")


def _validate_initramfs(recipe: Recipe, conv: Converter) -> None:
    spec = recipe.initramfs
    if spec.image is None:
        return
    defaults = type(spec)(image=spec.image)
    for name in PREBUILT_EXCLUDES:
        if getattr(spec, name) != getattr(defaults, name):
            raise conv.fail(("initramfs", name), f"'{name}' builds a userland, but 'image' names a prebuilt "
                            "initrd; use one or the other", "conflicting-keys")


def validate_recipe(recipe: Recipe, conv: Converter, need_kernel: bool) -> None:
    """Rules that span several keys."""
    _validate_initramfs(recipe, conv)
    if need_kernel and recipe.kernel.image is None and recipe.kernel.source is None:
        raise conv.fail(("kernel",), "set 'image' to a prebuilt kernel image or 'source' to build one",
                        "missing-key")
    if recipe.kernel.image is not None and recipe.kernel.source is not None:
        raise conv.fail(("kernel", "source"), "set only one of 'image' and 'source'", "conflicting-keys")
    inst = recipe.instance
    if recipe.instance.profile.value != "none" and (inst.name is None or inst.id is None):
        raise conv.fail(("instance", "profile"),
                        f"profile '{inst.profile}' needs [instance] name and id", "missing-key")
    key = recipe.bundle.key
    if key is not None and is_uri(key):
        raise conv.fail(("bundle", "key"), f"key URIs ({key.split(':', 1)[0]}:) are not supported yet; "
                        "give a PEM file", "unsupported")
    if key is not None and not Path(key).is_file():
        raise conv.fail(("bundle", "key"), f"no such file: {shown_path(Path(key))}", "bad-value")
    if len(recipe.kernel.cmdline.encode()) + 1 > 2048:
        raise conv.fail(("kernel", "cmdline"), "longer than the x86 limit of 2047 bytes", "bad-value")
    _validate_instance(recipe, conv)


# multikernel-abi.md §2: v2 trees use u32 cells where mk2 and later use u64.
U32_MAX = 0xFFFFFFFF


def _validate_instance(recipe: Recipe, conv: Converter) -> None:
    """[instance], [devicetree] and [acpi] rules that span keys (multikernel-abi.md §7)."""
    inst, dt = recipe.instance, recipe.devicetree
    has_cpus = bool(inst.cpus) or inst.cpu_count is not None
    if inst.cpus and inst.cpu_count is not None:
        raise conv.fail(("instance", "cpu_count"), "set only one of 'cpus' and 'cpu_count'", "conflicting-keys")
    if has_cpus != (inst.memory_bytes is not None):
        given, missing = ("cpus", "memory_bytes") if has_cpus else ("memory_bytes", "cpus")
        raise conv.fail(("instance", given), f"'{given}' needs '{missing}' too", "missing-key")
    used = [k for k in ("cpus", "cpu_count", "memory_bytes", "memory_base", "numa_nodes", "devices", "cmdline",
                        "preserve") if getattr(inst, k) not in (None, [], {}, "")]
    if inst.profile.value == "none" and used:
        raise conv.fail(("instance", used[0]), "set [instance] profile to v2, mk2 or mk-master to describe "
                        "an instance", "missing-key")
    if inst.memory_base is not None and inst.memory_bytes is not None and \
            inst.memory_base + inst.memory_bytes > (1 << 64):
        raise conv.fail(("instance", "memory_base"), "memory_base + memory_bytes passes 2^64", "bad-value")
    validate_devices(recipe, conv)
    if inst.profile.value == "v2":
        _validate_v2(recipe, conv)
    elif inst.profile.value != "none":
        _validate_kernel_placed(recipe, conv)
    _validate_pool(recipe, conv)
    _warn_smt_split(recipe, conv)
    cmdline = " ".join(filter(None, (recipe.kernel.cmdline, inst.cmdline)))
    if len(cmdline.encode()) + 1 > 2048:
        raise conv.fail(("instance", "cmdline"), "[kernel] cmdline plus this is longer than the x86 limit of "
                        "2047 bytes", "bad-value")
    if recipe.acpi.tables and recipe.initramfs.image is not None:
        raise conv.fail(("acpi", "tables"), "tables go into the early segment of a built initramfs, but "
                        "[initramfs] image is prebuilt", "conflicting-keys")
    if recipe.acpi.tables and recipe.metadata.arch.value != "x86_64":
        raise conv.fail(("acpi", "tables"), "initrd ACPI table upgrade is wired for x86_64 spawns only",
                        "unsupported")
    if dt.instance_dts is not None and not has_cpus:
        raise conv.fail(("devicetree", "instance_dts"), "extends the instance tree, which needs [instance] "
                        "cpus and memory_bytes", "missing-key")


def validate_devices(recipe: Recipe, conv: Converter) -> None:
    aliases: dict[str, str] = {}
    addresses: dict[str, str] = {}
    for name, dev in recipe.instance.devices.items():
        key = ("instance", "devices", name)
        kinds = [k for k in ("pci", "platform", "acpi_hid") if getattr(dev, k) is not None]
        if len(kinds) != 1:
            raise conv.fail(key, "give exactly one of pci, platform or acpi_hid", "bad-value")
        if dev.pci is not None and (dev.vendor_id is None or dev.device_id is None):
            raise conv.fail(key, "a PCI device needs vendor_id and device_id", "missing-key")
        if dev.pci is None and (dev.vendor_id is not None or dev.device_id is not None):
            raise conv.fail(key, "vendor_id and device_id apply to PCI devices only", "bad-value")
        if dev.alias is not None:
            if dev.alias in aliases:
                raise conv.fail(key, f"alias {dev.alias!r} is also used by {aliases[dev.alias]}", "bad-value")
            aliases[dev.alias] = name
        if dev.pci is not None:
            bdf = dev.pci.lower() if dev.pci.count(":") == 2 else "0000:" + dev.pci.lower()
            if bdf in addresses:
                raise conv.fail(key, f"PCI address {bdf} is also given to {addresses[bdf]}", "bad-value")
            addresses[bdf] = name


def _validate_kernel_placed(recipe: Recipe, conv: Converter) -> None:
    """mk2 and later (multikernel-abi.md §14, docs/multikernel-conformance.md): the kernel
    chooses every address and reads aliases for PCI devices only, so a recipe that asks
    otherwise is refused rather than silently ignored."""
    inst, profile = recipe.instance, recipe.instance.profile
    if inst.memory_base is not None:
        raise conv.fail(("instance", "memory_base"), f"profile {profile} cannot honour a fixed base: the kernel "
                        "takes instance memory from the pool allocator and never reads memory-base "
                        "(kernel/multikernel/dts.c mk_dt_parse_resources)", "unsupported")
    for index, chunk in enumerate(recipe.devicetree.pool_memory):
        if chunk.base is not None:
            raise conv.fail(("devicetree", "pool_memory", index, "base"), f"profile {profile} cannot honour a "
                            "fixed pool base: the baseline's memory@N takes only size and numa-node-id and the "
                            "pool picks the address (kernel/multikernel/baseline.c mk_baseline_parse_memory)",
                            "unsupported")
    for name, dev in inst.devices.items():
        if dev.alias is not None and dev.pci is None:
            raise conv.fail(("instance", "devices", name, "alias"), f"profile {profile} reads aliases of PCI "
                            "devices only (kernel/multikernel/dts.c mk_dt_add_pci_device)", "unsupported")


def _validate_v2(recipe: Recipe, conv: Converter) -> None:
    """The v2 RFC schema (§7.1): u32 CPU cells, u32 instance memory-bytes, one flat pool
    range (memory-base/memory-bytes, no memory@N), and neither NUMA nodes nor devices."""
    inst, dt = recipe.instance, recipe.devicetree
    for key, cpus in ((("instance", "cpus"), inst.cpus), (("devicetree", "pool_cpus"), dt.pool_cpus)):
        if big := next((c for c in cpus if c > U32_MAX), None):
            raise conv.fail(key, f"profile v2 writes CPUs as u32 cells; APIC id {big:#x} does not fit", "bad-value")
    if inst.memory_bytes is not None and inst.memory_bytes > U32_MAX:
        raise conv.fail(("instance", "memory_bytes"), f"profile v2 writes memory-bytes as one u32 cell; "
                        f"{inst.memory_bytes:#x} does not fit", "bad-value")
    if inst.numa_nodes:
        raise conv.fail(("instance", "numa_nodes"), "profile v2 has no NUMA nodes (mk2 and later)", "unsupported")
    if inst.memory_base is not None:
        raise conv.fail(("instance", "memory_base"), "profile v2 instance trees carry memory-bytes only; the "
                        "host places the memory", "unsupported")
    if inst.devices:
        raise conv.fail(("instance", "devices", next(iter(inst.devices))),
                        "profile v2 trees describe no devices (mk2 and later)", "unsupported")
    if len(dt.pool_memory) > 1:
        raise conv.fail(("devicetree", "pool_memory"), "profile v2 has one flat memory-base/memory-bytes "
                        "range, not memory@N chunks; give one chunk", "unsupported")
    if any(chunk.numa_node is not None for chunk in dt.pool_memory):
        raise conv.fail(("devicetree", "pool_memory"), "profile v2 has no NUMA nodes (mk2 and later)",
                        "unsupported")


def _validate_pool(recipe: Recipe, conv: Converter) -> None:
    inst, dt = recipe.instance, recipe.devicetree
    pool = set(dt.pool_cpus)
    if pool and (outside := [c for c in inst.cpus if c not in pool]):
        raise conv.fail(("instance", "cpus"), f"APIC id {outside[0]} is not in [devicetree] pool_cpus",
                        "bad-value")
    if inst.cpu_count is not None:
        if not dt.pool_cpus:
            raise conv.fail(("instance", "cpu_count"), "a CPU count is placed on [devicetree] pool_cpus; set "
                            "pool_cpus or list the APIC ids in 'cpus'", "missing-key")
        if inst.cpu_count > len(dt.pool_cpus):
            raise conv.fail(("instance", "cpu_count"), f"{inst.cpu_count} CPUs do not fit in a pool of "
                            f"{len(dt.pool_cpus)}", "bad-value")
    if not dt.pool_memory or inst.memory_bytes is None:
        return
    largest = max(chunk.size_bytes for chunk in dt.pool_memory)
    if inst.memory_bytes > largest:
        raise conv.fail(("instance", "memory_bytes"), f"{inst.memory_bytes:#x} bytes is larger than the "
                        f"largest pool chunk ({largest:#x}); instance memory lies within one chunk", "bad-value")
    if inst.memory_base is not None and any(c.base is not None for c in dt.pool_memory):
        end = inst.memory_base + inst.memory_bytes
        if not any(c.base is not None and c.base <= inst.memory_base and end <= c.base + c.size_bytes
                   for c in dt.pool_memory):
            raise conv.fail(("instance", "memory_base"), f"[{inst.memory_base:#x}, {end:#x}) does not lie "
                            "within one pool chunk", "bad-value")
    nodes = {c.numa_node for c in dt.pool_memory if c.numa_node is not None}
    if nodes and (stray := [n for n in inst.numa_nodes if n not in nodes]):
        raise conv.fail(("instance", "numa_nodes"), f"NUMA node {stray[0]} has no pool memory", "bad-value")


def _warn_smt_split(recipe: Recipe, conv: Converter) -> None:
    """SMT siblings share a core's caches and a noisy neighbour; splitting them between
    kernels is allowed but rarely meant (multikernel-abi.md §7.5), so it is a warning."""
    threads = recipe.devicetree.smt_threads
    if threads == 1:
        return
    pool = recipe.devicetree.pool_cpus
    groups = [(("devicetree", "pool_cpus"), pool, None), (("instance", "cpus"), recipe.instance.cpus, set(pool))]
    for key, cpus, within in groups:
        for cpu in sorted(cpus):
            core = range(cpu - cpu % threads, cpu - cpu % threads + threads)
            left = [s for s in core if s not in cpus and (within is None or not within or s in within)]
            if left and cpu == min(c for c in core if c in cpus):
                log.warning("%s: [%s] %s: APIC id %d shares a core with %s, which %s; keep SMT siblings together",
                            conv.loc(key), key[0], key[1], cpu, ", ".join(map(str, left)),
                            "stays with the host" if within is None else "the instance does not get")


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    """The fully resolved recipe as plain data (paths as strings), for `recipe show`."""
    out: dict[str, Any] = {}
    for name in SECTIONS:
        out[name] = _plain(getattr(recipe, name))
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)
                if not f.metadata.get(INTERNAL)}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    return value


__all__ = ["KeyRef", "load_recipe", "nearest", "parse_override", "recipe_to_dict"]
