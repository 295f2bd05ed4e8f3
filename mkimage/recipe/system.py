"""A system file: one host's multikernel pool and every spawn it runs.

The file is TOML read by the recipe loader's own machinery (same scanner, same typed
conversion, same ``file:line`` errors).  Each spawn names a recipe and gives the instance
it runs as, so one recipe can be several instances.  Loading resolves every instance
(CPU counts placed on the CPUs the others leave free) and refuses anything two
instances, or an instance and the pool, cannot both have, naming both places, before
anything is built.  Each spawn then becomes an ordinary ``Recipe`` whose [instance] and
[devicetree] pool come from the system, checked by the recipe loader's own cross-key
rules with their errors pointing into the system file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mkimage import assets
from mkimage.errors import InputError, Location, RecipeError, shown_path
from mkimage.recipe import checks
from mkimage.recipe.docs import item_rows, row_line
from mkimage.recipe.load import (
    Converter,
    Locs,
    Sources,
    is_uri,
    load_recipe,
    load_tree,
    unknown_key_message,
    validate_devices,
    validate_recipe,
)
from mkimage.recipe.locations import KeyPath
from mkimage.recipe.model import (
    AbiProfile,
    DeviceItem,
    InstanceSpec,
    KeyRef,
    Metadata,
    PoolMemoryItem,
    PreserveItem,
    Recipe,
    section,
)
from mkimage.recipe.placement import place_cpus
from mkimage.recipe.settings import in_range, iter_rows, matches, optional, setting

log = logging.getLogger("mkspawn")

SYSTEM_SECTIONS = ("system", "pool", "spawns")
# KEXEC_MK_ID is 11 bits in every generation (multikernel-abi.md §3): 0 is "no id".
MK_ID_MIN, MK_ID_MAX = 1, 2047


@section
@dataclass(frozen=True, slots=True)
class SystemMeta:
    name: str = field(metadata=setting("System name, recorded in the system manifest.",
                                       check=matches(checks.NAME_RE, "a name of letters, digits, '.', '_' or '-'"),
                                       example='"edge-box"'))
    version: str = field(metadata=setting("System version: dotted non-negative integers.",
                                          check=matches(checks.VERSION_RE, 'a version like "1.2.3"'),
                                          example='"1.0.0"'))
    profile: AbiProfile | None = field(
        default=None,
        metadata=setting("ABI profile of the host, for every spawn that (and whose recipe) names none. "
                         "One host runs one profile."),
    )
    key: KeyRef | None = field(
        default=None,
        metadata=setting("Private key (PEM path) that signs the system manifest and every bundle; "
                         "`--key` overrides it.", example='"keys/release.pem"'),
    )


@section
@dataclass(frozen=True, slots=True)
class PoolSpec:
    """The host's multikernel pool, described once for every spawn."""

    cpus: list[int] = field(
        default_factory=list,
        metadata=setting("APIC ids of the pool's CPUs (never 0, the boot CPU).", check=checks.apic_ids,
                         example="[2, 3, 4, 5, 6, 7, 8, 9]"),
    )
    smt_threads: int = field(
        default=1,
        metadata=setting("Hardware threads per core: APIC ids of one core differ only in their low "
                         "log2(smt_threads) bits.", check=checks.smt_threads),
    )
    memory: list[PoolMemoryItem] = field(
        default_factory=list,
        metadata=setting("Pool memory chunks; each instance's memory lies within one chunk.",
                         check=checks.pool_memory, example="[{ size_bytes = 0x40000000, numa_node = 0 }]"),
    )
    devices: dict[str, DeviceItem] = field(
        default_factory=dict,
        metadata=setting("Devices the pool can give to instances, by node name (as [instance] devices).",
                         check=checks.devices,
                         example='{ nic0 = { pci = "0000:09:00.0", vendor_id = 0x1af4, device_id = 0x1041 } }'),
    )


@dataclass(frozen=True, slots=True)
class SpawnSpec:
    """One spawn: a recipe and the instance it runs as (its [instance], with devices named
    from the pool).  The keys sit in the [[spawns]] table itself, so each has its own line."""

    recipe: Path = field(metadata=setting("The spawn's recipe, relative to the system file.",
                                          check=checks.existing_file, example='"demo.toml"'))
    name: str = field(metadata=setting("Instance name (unique in the system).",
                                       check=matches(checks.NAME_RE, "a name")))
    id: int = field(metadata=setting(f"Instance id (KEXEC_MK_ID, {MK_ID_MIN}..{MK_ID_MAX}; unique in the system).",
                                     check=in_range(MK_ID_MIN, MK_ID_MAX)))
    memory_bytes: int = field(metadata=setting("Instance memory in bytes, page aligned.", check=checks.page_bytes,
                                               example="0x10000000"))
    profile: AbiProfile | None = field(
        default=None,
        metadata=setting("ABI profile. Unset: the recipe's [instance] profile, else [system] profile."),
    )
    cpus: list[int] = field(
        default_factory=list,
        metadata=setting("APIC ids from [pool] cpus. Not with `cpu_count`.", check=checks.apic_ids,
                         example="[2, 3]"),
    )
    cpu_count: int | None = field(
        default=None,
        metadata=setting("Number of CPUs, placed on the pool CPUs no other spawn names (whole cores first).",
                         check=optional(in_range(1, 8192))),
    )
    numa_nodes: list[int] = field(default_factory=list,
                                  metadata=setting("NUMA nodes the memory comes from.", check=checks.numa_nodes))
    devices: list[str] = field(default_factory=list,
                               metadata=setting("Names of [pool] devices given to this instance.",
                                                example='["nic0"]'))
    cmdline: str = field(default="", metadata=setting("Appended to the recipe's command line for this instance."))
    preserve: list[PreserveItem] = field(default_factory=list,
                                         metadata=setting("Preserved-memory requests (as [instance] preserve).",
                                                          check=checks.preserve))


@dataclass(frozen=True, slots=True)
class SystemFile:
    system: SystemMeta
    pool: PoolSpec = field(default_factory=PoolSpec)
    spawns: list[SpawnSpec] = field(default_factory=list,
                                    metadata=setting("The spawns, in the order they are loaded and started."))


@dataclass(frozen=True, slots=True)
class Spawn:
    """One resolved spawn: its recipe with the system's instance and pool filled in."""

    index: int
    recipe: Recipe
    instance: InstanceSpec  # = recipe.instance, CPUs placed


@dataclass(frozen=True, slots=True)
class System:
    path: Path
    meta: SystemMeta
    pool: PoolSpec
    profile: AbiProfile
    spawns: tuple[Spawn, ...]
    warnings: tuple[str, ...] = ()


def _resolved(path: Path) -> Path:
    """A ``builtin:recipes/…`` name as the shipped file, like the recipe loader takes it."""
    return assets.builtin_path(str(path)) if assets.is_builtin(str(path)) else Path(path)


def is_system_file(path: Path) -> bool:
    """A TOML file with a top-level [system] table or [[spawns]] (anything unreadable is
    left to the recipe loader to report)."""
    try:
        data = tomllib.loads(_resolved(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, InputError):
        return False
    return isinstance(data.get("system"), dict) or isinstance(data.get("spawns"), list)


def load_system(path: Path, *, strict: bool = False, env: Mapping[str, str] | None = None,
                cwd: Path | None = None) -> System:
    """Load the system file and every spawn's recipe, refuse conflicts (RecipeError,
    file:line of both places), and return each spawn as a checked Recipe."""
    env = os.environ if env is None else env
    cwd = Path.cwd() if cwd is None else cwd
    path = Path(os.path.abspath(_resolved(path)))
    sources: Sources = {}
    data, locs = load_tree(path, sources)
    conv = Converter(locs, sources, cwd)
    for key in data:
        if key not in SYSTEM_SECTIONS:
            raise conv.fail((key,), unknown_key_message(key, list(SYSTEM_SECTIONS)), "unknown-key")
    if "system" not in data:
        raise conv.fail((), "missing required table [system]", code="missing-key")
    try:
        spec: SystemFile = conv.table(SystemFile, {**data}, ())
        return _Resolver(path, spec, conv, strict, env, cwd).resolve()
    except RecipeError as e:
        raise _as_written(e, data.get("spawns")) from None


def _where(loc: Location) -> str:
    return str(loc)


class SpawnKeyError(RecipeError):
    """A key of one [[spawns]] entry, named the way the file names the spawn (its
    ``name``, else its place in the list) rather than as ``spawns[N]``."""

    def __init__(self, e: RecipeError, spawn: str, rest: str) -> None:
        super().__init__(e.loc, e.key, e.message, code=e.code, hint=e.hint)
        self.spawn, self.rest = spawn, rest

    def render(self) -> str:
        key = f" {self.rest}" if self.rest else ""
        return f"{self.loc}: [[spawns]] {self.spawn}{key}: {self.message} [{self.code}]"


_SPAWN_KEY = re.compile(r"spawns\[(\d+)\](?:\.(.*))?")


def _as_written(e: RecipeError, spawns: object) -> RecipeError:
    """``e`` about ``spawns[N].key`` as a SpawnKeyError naming spawn N by its name."""
    match = _SPAWN_KEY.fullmatch(e.key or "")
    if match is None:
        return e
    index = int(match[1])
    entry = spawns[index] if isinstance(spawns, list) and index < len(spawns) else None
    name = entry.get("name") if isinstance(entry, dict) else None
    shown = repr(name) if isinstance(name, str) and name else f"#{index + 1}"
    return SpawnKeyError(e, shown, match[2] or "")


class SystemConflictError(RecipeError):
    """Something the system file asks that cannot hold: the line of one place, the
    message naming the other."""

    def __init__(self, loc: Location, message: str, *, code: str) -> None:
        super().__init__(loc, None, message, code=code)


@contextlib.contextmanager
def _system_keys(spawn: int | None) -> Iterator[None]:
    """A recipe rule broken by a value from the system file names the system's key
    (``spawns[1].cpus``, ``pool.memory[0].base``), not the recipe key it became.
    ``spawn`` None: the rule ran on the pool's devices."""
    try:
        yield
    except RecipeError as e:
        key = e.key or ""
        section, _, rest = key.partition(".")
        if section == "instance" and rest:
            key = f"pool.{rest}" if spawn is None else f"spawns[{spawn}].{rest}"
        elif section == "devicetree" and rest.startswith(("pool_cpus", "pool_memory", "smt_threads")):
            key = "pool." + rest.removeprefix("pool_")
        if key == e.key:
            raise
        raise RecipeError(e.loc, key, e.message, code=e.code, hint=e.hint) from None


class _Resolver:
    def __init__(self, path: Path, spec: SystemFile, conv: Converter, strict: bool,
                 env: Mapping[str, str], cwd: Path) -> None:
        self.path, self.spec, self.conv, self.strict, self.env, self.cwd = path, spec, conv, strict, env, cwd
        self.warnings: list[str] = []

    def loc(self, *key: str | int) -> Location:
        return self.conv.loc(key)

    def at(self, i: int, *key: str | int) -> Location:
        return self.conv.loc(("spawns", i, *key))

    def resolve(self) -> System:
        spec = self.spec
        if not spec.spawns:
            raise self.conv.fail(("spawns",), "a system needs at least one [[spawns]] entry", code="missing-key")
        if not spec.pool.cpus:
            raise self.conv.fail(("pool",), "missing [pool] cpus (the APIC ids the spawns share)", code="missing-key")
        if not spec.pool.memory:
            raise self.conv.fail(("pool",), "missing [pool] memory (the chunks the spawns' memory comes from)",
                                 code="missing-key")
        key = spec.system.key
        if key is not None and (is_uri(key) or not Path(key).is_file()):
            raise self.conv.fail(("system", "key"), f"expected a PEM private key file, got {shown_path(Path(key))}",
                                 code="bad-value")
        self._check_pool_devices()
        recipes = [load_recipe(s.recipe, env=self.env, cwd=self.cwd) for s in spec.spawns]
        profile = self._profile(recipes)
        self._check_identity()
        cpus = self._place_cpus()
        self._check_smt(cpus)
        self._check_devices()
        self._check_memory()
        spawns = tuple(self._spawn(i, recipe, profile, cpus[i]) for i, recipe in enumerate(recipes))
        return System(self.path, spec.system, spec.pool, profile, spawns, tuple(self.warnings))

    # ---- whole-system rules ------------------------------------------------------------

    def _check_pool_devices(self) -> None:
        """The recipe loader's device rules, on the pool's table."""
        pool = Recipe(Metadata(name="pool", version="0"), instance=InstanceSpec(devices=self.spec.pool.devices))
        where: Locs = {("instance", "devices", name): self.loc("pool", "devices", name)
                       for name in self.spec.pool.devices}
        with _system_keys(None):
            validate_devices(pool, Converter(where, {}, self.cwd))

    def _profile(self, recipes: Sequence[Recipe]) -> AbiProfile:
        chosen: list[tuple[AbiProfile, Location]] = []
        for i, (spawn, recipe) in enumerate(zip(self.spec.spawns, recipes, strict=True)):
            if spawn.profile is not None:
                profile, loc = spawn.profile, self.at(i, "profile")
            elif recipe.instance.profile is not AbiProfile.NONE:
                profile = recipe.instance.profile
                loc = recipe.initramfs.locations.of(("instance", "profile"))
            elif self.spec.system.profile is not None:
                profile, loc = self.spec.system.profile, self.loc("system", "profile")
            else:
                raise SystemConflictError(self.at(i), f"spawn {spawn.name!r}: no ABI profile: set [system] profile, or "
                                "profile here or in its recipe's [instance]", code="missing-key")
            if profile is AbiProfile.NONE:
                raise SystemConflictError(loc, f"spawn {spawn.name!r}: profile none runs no instances; give a "
                                          "multikernel profile", code="bad-value")
            if chosen and profile is not chosen[0][0]:
                raise SystemConflictError(loc, f"spawn {spawn.name!r}: profile {profile} differs from profile "
                                f"{chosen[0][0]} at {_where(chosen[0][1])}; one host runs one ABI profile",
                                code="profile-mismatch")
            chosen.append((profile, loc))
        return chosen[0][0]

    def _check_identity(self) -> None:
        names: dict[str, int] = {}
        ids: dict[int, int] = {}
        for i, spawn in enumerate(self.spec.spawns):
            inst = spawn
            if inst.name in names:
                j = names[inst.name]
                raise SystemConflictError(self.at(i, "name"), f"instance name {inst.name!r} is also used at "
                                f"{_where(self.at(j, 'name'))}", code="duplicate-instance")
            if inst.id in ids:
                j = ids[inst.id]
                raise SystemConflictError(self.at(i, "id"), f"spawn {inst.name!r}: instance id {inst.id} is also "
                                          f"used by {self.spec.spawns[j].name!r} at {_where(self.at(j, 'id'))}",
                                          code="duplicate-instance")
            names[inst.name], ids[inst.id] = i, i

    def _place_cpus(self) -> list[tuple[int, ...]]:
        """Named CPUs first (each in the pool, none twice), then counts on what is left."""
        pool = self.spec.pool
        owner: dict[int, int] = {}
        placed: list[tuple[int, ...]] = []
        for i, spawn in enumerate(self.spec.spawns):
            inst = spawn
            if inst.cpus and inst.cpu_count is not None:
                raise SystemConflictError(self.at(i, "cpu_count"), f"spawn {inst.name!r}: set only one of 'cpus' and "
                                "'cpu_count'", code="conflicting-keys")
            if not inst.cpus and inst.cpu_count is None:
                raise SystemConflictError(self.at(i), f"spawn {inst.name!r}: set 'cpus' (APIC ids) or 'cpu_count'",
                                code="missing-key")
            for cpu in inst.cpus:
                if cpu not in pool.cpus:
                    raise SystemConflictError(self.at(i, "cpus"), f"spawn {inst.name!r}: APIC id {cpu} is not in "
                                    f"the pool's cpus at {_where(self.loc('pool', 'cpus'))}", code="cpu-outside-pool")
                if cpu in owner:
                    j = owner[cpu]
                    raise SystemConflictError(self.at(i, "cpus"), f"spawn {inst.name!r}: APIC id {cpu} is also "
                                              f"given to {self.spec.spawns[j].name!r} at "
                                              f"{_where(self.at(j, 'cpus'))}", code="cpu-conflict")
                owner[cpu] = i
            placed.append(tuple(inst.cpus))
        for i, spawn in enumerate(self.spec.spawns):
            count = spawn.cpu_count
            if count is None:
                continue
            free = [c for c in pool.cpus if c not in owner]
            if count > len(free):
                raise SystemConflictError(self.at(i, "cpu_count"), f"spawn {spawn.name!r}: {count} CPUs do not fit: "
                                f"{len(free)} of the pool's {len(pool.cpus)} CPUs at "
                                f"{_where(self.loc('pool', 'cpus'))} are left by the other spawns", code="cpu-conflict")
            placed[i] = place_cpus(free, count, pool.smt_threads)
            owner.update((c, i) for c in placed[i])
        return placed

    def _check_smt(self, cpus: Sequence[tuple[int, ...]]) -> None:
        """Siblings of one core in two instances share caches and a noisy neighbour across
        kernels (multikernel-abi.md §13): a warning, or an error with --strict."""
        threads = self.spec.pool.smt_threads
        owner = {c: i for i, group in enumerate(cpus) for c in group}
        for i, group in enumerate(cpus):
            for cpu in group:
                base = cpu - cpu % threads
                other = next((owner[s] for s in range(base, base + threads) if owner.get(s, i) != i), None)
                if other is None or other < i:
                    continue
                a, b = self.spec.spawns[i].name, self.spec.spawns[other].name
                sibling = next(s for s in range(base, base + threads) if owner.get(s) == other)
                key = "cpus" if self.spec.spawns[i].cpus else "cpu_count"
                key_b = "cpus" if self.spec.spawns[other].cpus else "cpu_count"
                message = (f"spawn {a!r}: APIC id {cpu} shares a core with APIC id {sibling} of spawn {b!r} at "
                           f"{_where(self.at(other, key_b))}; keep SMT siblings in one instance")
                if self.strict:
                    raise SystemConflictError(self.at(i, key), message, code="smt-split")
                self.warnings.append(f"{self.at(i, key)}: {message}")
                log.warning("%s: %s", self.at(i, key), message)
                break

    def _check_devices(self) -> None:
        owner: dict[str, tuple[int, int]] = {}
        for i, spawn in enumerate(self.spec.spawns):
            for k, name in enumerate(spawn.devices):
                here = self.at(i, "devices", k)
                if name not in self.spec.pool.devices:
                    known = ", ".join(sorted(self.spec.pool.devices)) or "none"
                    raise SystemConflictError(here, f"spawn {spawn.name!r}: device {name!r} is not in the pool's "
                                    f"devices at {_where(self.loc('pool', 'devices'))} (it has: {known})",
                                    code="unknown-device")
                if name in owner:
                    j, m = owner[name]
                    what = "listed twice" if j == i else \
                        f"also given to {self.spec.spawns[j].name!r}"
                    raise SystemConflictError(here, f"spawn {spawn.name!r}: device {name!r} is {what} at "
                                    f"{_where(self.at(j, 'devices', m))}", code="device-conflict")
                owner[name] = (i, k)

    def _check_memory(self) -> None:
        """Per NUMA node the instances pinned to it fit the node's chunks; then every
        instance gets a place inside one chunk (best fit, largest instance first) — the
        pool allocator hands out contiguous ranges, so free bytes split across chunks
        are no use to an instance larger than each piece."""
        pool = self.spec.pool
        memory_loc = _where(self.loc("pool", "memory"))
        nodes = {c.numa_node for c in pool.memory}
        for i, spawn in enumerate(self.spec.spawns):
            for node in spawn.numa_nodes:
                if node not in nodes:
                    raise SystemConflictError(self.at(i, "numa_nodes"), f"spawn {spawn.name!r}: NUMA node {node} has "
                                    f"no chunk in the pool's memory at {memory_loc}", code="bad-value")
        budgets: dict[int | None, int] = {}
        for chunk in pool.memory:
            budgets[chunk.numa_node] = budgets.get(chunk.numa_node, 0) + chunk.size_bytes
        total = sum(budgets.values())
        used: dict[int | None, int] = {}
        used_total = 0
        for i, spawn in enumerate(self.spec.spawns):
            inst = spawn
            used_total += inst.memory_bytes
            if used_total > total:
                raise SystemConflictError(self.at(i, "memory_bytes"), f"spawn {inst.name!r}: the spawns so far need "
                                f"{used_total:#x} bytes, more than the pool's {total:#x} at {memory_loc}",
                                code="memory-overcommit")
            if len(inst.numa_nodes) == 1:
                node = inst.numa_nodes[0]
                used[node] = used.get(node, 0) + inst.memory_bytes
                if used[node] > budgets[node]:
                    raise SystemConflictError(self.at(i, "memory_bytes"), f"spawn {inst.name!r}: the spawns on "
                                    f"NUMA node {node} need {used[node]:#x} bytes, more than the node's "
                                    f"{budgets[node]:#x} in the pool's memory at {memory_loc}",
                                    code="memory-overcommit")
        free = [chunk.size_bytes for chunk in pool.memory]
        order = sorted(range(len(self.spec.spawns)), key=lambda i: (-self.spec.spawns[i].memory_bytes, i))
        for i in order:
            inst = self.spec.spawns[i]
            allowed = [k for k, chunk in enumerate(pool.memory)
                       if not inst.numa_nodes or chunk.numa_node in inst.numa_nodes]
            fits = [k for k in allowed if free[k] >= inst.memory_bytes]
            if not fits:
                largest = max(free[k] for k in allowed)
                raise SystemConflictError(self.at(i, "memory_bytes"), f"spawn {inst.name!r}: "
                                f"{inst.memory_bytes:#x} bytes must lie within one pool chunk, but the largest "
                                f"piece the other spawns leave in the chunks at {memory_loc} is {largest:#x}",
                                code="memory-fragmented")
            best = min(fits, key=lambda k: (free[k], k))
            free[best] -= inst.memory_bytes

    # ---- one spawn as a recipe ---------------------------------------------------------

    def _spawn(self, i: int, recipe: Recipe, profile: AbiProfile, cpus: tuple[int, ...]) -> Spawn:
        spec, pool = self.spec.spawns[i], self.spec.pool
        instance = InstanceSpec(
            name=spec.name, id=spec.id, profile=profile, cpus=list(cpus), memory_bytes=spec.memory_bytes,
            numa_nodes=list(spec.numa_nodes), devices={name: pool.devices[name] for name in spec.devices},
            cmdline=" ".join(filter(None, (recipe.instance.cmdline, spec.cmdline))), preserve=list(spec.preserve),
        )
        # SMT splits are the system's to judge (above), so the per-recipe warning is off.
        devicetree = dataclasses.replace(recipe.devicetree, pool_cpus=list(pool.cpus), pool_memory=list(pool.memory),
                                         smt_threads=1)
        merged = dataclasses.replace(recipe, instance=instance, devicetree=devicetree)
        where = self._spawn_locations(i, recipe, keep_profile=spec.profile is None)
        conv = Converter(where, {}, self.cwd)
        with _system_keys(i):
            validate_recipe(merged, conv, need_kernel=True)
        final_dt = dataclasses.replace(devicetree, smt_threads=pool.smt_threads)
        initramfs = dataclasses.replace(merged.initramfs, locations=conv.where)
        merged = dataclasses.replace(merged, devicetree=final_dt, initramfs=initramfs)
        return Spawn(i, merged, instance)

    def _spawn_locations(self, i: int, recipe: Recipe, *, keep_profile: bool) -> Locs:
        """The recipe's own key locations, with [instance] and the pool pointing into the
        system file, so the recipe rules name the line the value came from."""
        own = recipe.initramfs.locations.by_key
        pool_keys = {("devicetree", "pool_cpus"), ("devicetree", "pool_memory"), ("devicetree", "smt_threads")}
        where: Locs = {k: v for k, v in own.items()
                       if not (k[:1] == ("instance",) and not (keep_profile and k == ("instance", "profile")))
                       and k[:2] not in pool_keys}
        system = self.conv.where.by_key
        devices = self.spec.spawns[i].devices
        prefix: KeyPath = ("spawns", i)
        where[("instance",)] = self.conv.loc(prefix)
        for key, loc in system.items():
            if key[:2] == prefix and key[2:] and key[2] != "recipe":
                rest = key[2:]
                if rest[0] == "devices" and len(rest) > 1 and isinstance(rest[1], int):
                    rest = ("devices", devices[rest[1]], *rest[2:])
                where[("instance", *rest)] = loc
            elif key[:1] == ("pool",) and key[1:2] in (("cpus",), ("memory",), ("smt_threads",)):
                name = {"cpus": "pool_cpus", "memory": "pool_memory", "smt_threads": "smt_threads"}[str(key[1])]
                where[("devicetree", name, *key[2:])] = loc
        return where


__all__ = ["PoolSpec", "Spawn", "SpawnSpec", "System", "SystemFile", "SystemMeta",
           "is_system_file", "load_system"]


def settings_markdown() -> str:
    """The settings tables of docs/systems.md, from the model above (a test compares)."""
    parts = []
    for title, rows in (("`[system]`", iter_rows(SystemMeta, "system.")), ("`[pool]`", iter_rows(PoolSpec, "pool.")),
                        ("`[[spawns]]`", iter_rows(SpawnSpec, "spawns[]."))):
        parts.append(f"\n### {title}\n\n| key | type | default | description |\n|---|---|---|---|\n")
        for row in rows:
            parts.append(row_line(row))
            parts.extend(row_line(sub) for sub in item_rows(row))
    return "".join(parts)
