"""Build a kernel from a recipe's [kernel] source: configure, check, compile, cache.

The cache key is computed from what the recipe asks for (source digest, patch series,
base config, requested symbols, toolchain versions, arch, build environment), never
from make's output, so an unchanged recipe is answered from the cache without running
make at all.  On a miss the stages run in order and stop at the first failure:

  source  → materialise the tree (download, extract, fetch) and apply the patch series
  config  → base config, merge the request, olddefconfig, check nothing was dropped
  compile → make with fixed KBUILD_BUILD_* so the outputs are reproducible; with
            CONFIG_MODULES=y the same make also builds the modules, which are then
            installed (stripped, depmod run) into the entry's ``modroot/``
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mkimage import progress
from mkimage.digests import file_sha256
from mkimage.errors import InputError, ToolError
from mkimage.kernel.cache import (
    KernelCache,
    digest_tree,
    locked,
    remove_tree,
    tool_identity,
)
from mkimage.kernel.contract import check_image
from mkimage.kernel.farm import FARM_LOGS, plan_farm, report_build
from mkimage.kernel.kconfig import (
    ConfigRequest,
    KernelConfigError,
    explain,
    find_dropped,
    merge_into,
    parse_config,
)
from mkimage.kernel.patches import PatchSeries, patched_tree, read_series
from mkimage.kernel.source import SourceIdentity, materialise_source, source_identity
from mkimage.outputs import write_atomic
from mkimage.recipe.model import KernelSpec
from mkimage.recipe.userconfig import BuildSettings, redact
from mkimage.run import run, run_streaming, which
from mkimage.store import DIGESTS_KEY, ENTRY_NAME, entry_damage, mark_used, publish_entry, staging_dir

log = logging.getLogger("mkspawn")

# Bump when a change here alters what a given key would produce.
STAGE_VERSION = 1
CONFIG_TIMEOUT_S = 900
COMPILE_TIMEOUT_S = 4 * 3600
PROGRESS_EVERY_OBJECTS = 100
# Copied into O= and named relatively, so the .config (embedded by IKCONFIG) does not
# carry the recipe's absolute path and the image stays reproducible across checkouts.
TRUSTED_KEYS_NAME = "mkspawn-trusted-keys.pem"
MODROOT_NAME = "modroot"  # INSTALL_MOD_PATH inside the entry: modroot/lib/modules/<release>/
INSTALL_TIMEOUT_S = 900

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class ArchParams:
    make_arch: str  # ARCH= (x86_64, not x86: tinyconfig would give a 32-bit kernel)
    srcarch: str  # directory under arch/
    image_target: str
    image_path: str  # relative to O=
    machine: str  # `uname -m` of a host that builds natively
    cross_compile: str  # CROSS_COMPILE= on any other host (Debian's cross toolchain prefix)

    def toolchain_prefix(self, host_machine: str) -> str:
        return "" if host_machine == self.machine else self.cross_compile


ARCHES: dict[str, ArchParams] = {
    "x86_64": ArchParams("x86_64", "x86", "bzImage", "arch/x86/boot/bzImage", "x86_64", "x86_64-linux-gnu-"),
    # The uncompressed Image: arm64 kexec_file_load takes nothing else (kexec-and-formats.md §3).
    "arm64": ArchParams("arm64", "arm64", "Image", "arch/arm64/boot/Image", "aarch64", "aarch64-linux-gnu-"),
}


@dataclass(frozen=True, slots=True)
class KernelBuild:
    """A built kernel in the cache.  Paths point into ``kernel/out/<cache_key>/`` and stay
    valid until the cache is cleaned; copy them before changing them."""

    image: Path
    vmlinux: Path
    config: Path
    system_map: Path
    release: str
    cache_key: str
    cache_hit: bool
    inputs: list[tuple[str, str, str]]  # (kind, name, sha256); kinds: source, patch, config-*, trusted-keys
    config_sha256: str
    tools: dict[str, str]
    build_log: Path
    # lib/modules/<release> as modules_install left it (modules.dep and friends included);
    # None when the kernel was built without CONFIG_MODULES=y.
    modules_dir: Path | None = None
    # sha256 of the entry's files as this load checked them, so the bundle build does not
    # read a vmlinux or image again just to hash it.
    digests: dict[Path, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything decided before any tree is touched."""

    key: str
    identity: SourceIdentity
    series: PatchSeries
    request: ConfigRequest
    inputs: list[tuple[str, str, str]]
    tools: dict[str, str]
    env: dict[str, str]
    make_vars: list[str]
    ccache: bool


def build_kernel(
    spec: KernelSpec,
    *,
    arch: str,
    cache_root: Path,
    source_date_epoch: int,
    use_ccache: bool | None = None,
    farm: BuildSettings | None = None,
) -> KernelBuild:
    """Build (or fetch from the cache) the kernel ``spec.source`` describes.

    ``use_ccache``: None uses ccache when it is installed; it never changes the key.
    ``farm``: this machine's [build] settings (a remote cache, distcc hosts, make's job
    count); they change how fast a miss compiles, never the key or the kernel's bytes.
    """
    if spec.source is None:
        raise InputError("[kernel] source is not set; nothing to build", code="missing-key")
    params = ARCHES.get(arch)
    if params is None:
        raise InputError(f"building kernels for {arch} is not supported yet (only {', '.join(ARCHES)})",
                         code="unsupported")
    cache = KernelCache(cache_root)
    if use_ccache is None:
        use_ccache = shutil.which("ccache") is not None
    plan = _plan(spec, params, cache, source_date_epoch, use_ccache)
    hit = _load_entry(cache, plan.key, params, cache_hit=True)
    if hit is not None:
        log.info("kernel: cache hit %s (%s)", plan.key[:16], hit.release)
        return hit
    with locked(cache.lock_path(f"build-{plan.key}"), f"kernel build {plan.key[:16]}"):
        done = _load_entry(cache, plan.key, params, cache_hit=True)  # another process finished it meanwhile
        if done is not None:
            return done
        _build(spec, params, cache, plan, farm or BuildSettings())
    built = _load_entry(cache, plan.key, params, cache_hit=False)
    assert built is not None
    return built


# ---- planning: the cache key from the request alone ----------------------------------

def _plan(spec: KernelSpec, params: ArchParams, cache: KernelCache, epoch: int, use_ccache: bool) -> _Plan:
    assert spec.source is not None
    identity = source_identity(spec.source, cache_root=cache.root)
    series = read_series(spec.patches, spec.series)
    inputs: list[tuple[str, str, str]] = [("source", identity.name, identity.digest)]
    inputs += [("patch", str(p.path), p.sha256) for p in series.patches]

    request = ConfigRequest()
    base: dict[str, str] = {"target": spec.base.value}
    if spec.base_config is not None:
        base = {"file": file_sha256(spec.base_config)}
        inputs.append(("config-base", str(spec.base_config), base["file"]))
    for fragment in spec.fragments:
        data = fragment.read_bytes()
        request.add_fragment(parse_config(data.decode("utf-8", "replace"), _shown(fragment)))
        inputs.append(("config-fragment", str(fragment), hashlib.sha256(data).hexdigest()))
    if spec.options:
        request.add_options(spec.options, "[kernel.options]")
        text = "".join(f"{k}={v}\n" for k, v in spec.options.items())
        inputs.append(("config-fragment", "[kernel.options]", hashlib.sha256(text.encode()).hexdigest()))
    if spec.trusted_keys is not None:
        request.add_options({"SYSTEM_TRUSTED_KEYS": f'"{TRUSTED_KEYS_NAME}"'}, "[kernel] trusted_keys")
        inputs.append(("trusted-keys", str(spec.trusted_keys), file_sha256(spec.trusted_keys)))

    cross = params.toolchain_prefix(os.uname().machine)
    tools = {
        "make": tool_identity(cache, "make"),
        "gcc": tool_identity(cache, f"{cross}gcc"),
        "ld": tool_identity(cache, f"{cross}ld"),
    }
    env = kbuild_env(epoch)
    material = {
        "stage": STAGE_VERSION,
        "arch": params.make_arch,
        "source": identity.digest,
        "series": series.digest,
        "base": base,
        "request": request.as_fragment(),
        "trusted_keys": next((i[2] for i in inputs if i[0] == "trusted-keys"), None),
        "tools": tools,
        "env": env,
    }
    key = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    if use_ccache:
        tools = {**tools, "ccache": tool_identity(cache, "ccache")}
        # Depend mode hashes the compiler's own -MD output instead of running the
        # preprocessor first: a cold kernel build through ccache then costs about what
        # a plain one does (preprocessor mode measured +38-60% here).  BASEDIR makes
        # the cache paths relative, so other O= directories still hit.
        env = {**env, "CCACHE_DIR": str(cache.ccache_dir), "CCACHE_BASEDIR": str(cache.root),
               "CCACHE_DEPEND": "1"}
    make_vars = [f"ARCH={params.make_arch}"] + ([f"CROSS_COMPILE={cross}"] if cross else [])
    make_vars += [f"CC=ccache {cross}gcc"] if use_ccache else []
    return _Plan(key, identity, series, request, inputs, tools, env, make_vars, use_ccache)


def kbuild_env(epoch: int) -> dict[str, str]:
    """The variables that make a kernel build reproducible (environment.md §4)."""
    t = time.gmtime(epoch)
    # `date` layout, spelled out so no locale can change it.
    stamp = (f"{_DAYS[t.tm_wday]} {_MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} "
             f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} UTC {t.tm_year}")
    return {
        "KBUILD_BUILD_TIMESTAMP": stamp,
        "KBUILD_BUILD_USER": "mkspawn",
        "KBUILD_BUILD_HOST": "mkspawn",
        "KBUILD_BUILD_VERSION": "1",  # else the "#N" counter grows with every build
        "SOURCE_DATE_EPOCH": str(epoch),
    }


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ---- the cache entry -----------------------------------------------------------------

_FILES = {"image": "image", "vmlinux": "vmlinux", "config": "config", "system_map": "System.map",
          "build_log": "build.log"}
_UNDIGESTED = frozenset({ENTRY_NAME})


def _load_entry(cache: KernelCache, key: str, params: ArchParams, *, cache_hit: bool) -> KernelBuild | None:
    out = cache.out_dir(key)
    try:
        entry: dict[str, Any] = json.loads((out / ENTRY_NAME).read_text())
    except (OSError, ValueError):
        return None
    paths = {field: out / name for field, name in _FILES.items()}
    if entry.get("key") != key or not all(p.is_file() for p in paths.values()):
        return None
    if not _entry_is_intact(out, entry, key, params):
        return None
    modules = entry.get("modules")
    if modules is None and modules_enabled(paths["config"].read_text(errors="replace")):
        return None  # an entry from before modules were installed: incomplete, build it again
    modules_dir = out / MODROOT_NAME / "lib" / "modules" / entry["release"] if modules else None
    if modules_dir is not None and not (modules_dir / "modules.dep").is_file():
        return None
    mark_used(out)
    return KernelBuild(
        **paths,
        modules_dir=modules_dir,
        release=entry["release"],
        cache_key=key,
        cache_hit=cache_hit,
        inputs=[(kind, name, digest) for kind, name, digest in entry["inputs"]],
        config_sha256=entry["config_sha256"],
        tools=dict(entry["tools"]),
        digests={out / name: digest for name, digest in entry[DIGESTS_KEY].items()},
    )


def _entry_is_intact(out: Path, entry: dict[str, Any], key: str, params: ArchParams) -> bool:
    """Whether the entry's files are the ones recorded when it was stored.

    Every hit re-hashes the entry: a truncated or bit-flipped image would otherwise be
    served, and signed, as if make had produced it.  A damaged entry is rebuilt.
    """
    problems = entry_damage(out, entry)
    if problems is not None:
        if problems:
            log.warning("kernel: cache entry %s is damaged (%s); building it again",
                        key[:16], "; ".join(problems[:3]) + (" …" if len(problems) > 3 else ""))
            return False
        return True
    # An entry stored before digests were kept: rebuilding would cost a full kernel
    # compile, so adopt it when its image passes the loader contract (which refuses a
    # cut or corrupt bzImage) and record its digests from now on.
    report = check_image(out / _FILES["image"], abi_profile="none", arch=params.make_arch)
    if not report.ok:
        failed = report.failures[0]
        log.warning("kernel: cache entry %s has no recorded digests and its image fails %s (%s); "
                    "building it again", key[:16], failed.name, failed.detail)
        return False
    entry[DIGESTS_KEY] = digest_tree(out, exclude=_UNDIGESTED)
    write_atomic(out / ENTRY_NAME, json.dumps(entry, indent=1, sort_keys=True).encode())
    log.info("kernel: recorded digests for cache entry %s, stored before digests were kept", key[:16])
    return True


# ---- a build (under the key's lock) --------------------------------------------------

def _build(spec: KernelSpec, params: ArchParams, cache: KernelCache, plan: _Plan, settings: BuildSettings) -> None:
    assert spec.source is not None
    started = time.monotonic()
    source = materialise_source(spec.source, plan.identity, cache_root=cache.root, mirrors=spec.mirrors)
    inputs = [("source", plan.identity.name, source.sha256), *plan.inputs[1:]]
    tree = patched_tree(cache, source.tree, source.sha256, plan.series)

    build_dir = cache.build_dir(plan.key)
    remove_tree(build_dir)
    build_dir.mkdir(parents=True)
    make = ["make", "-C", str(tree), f"O={build_dir}", *plan.make_vars]
    final = configure(spec, params, tree, build_dir, plan.request, make, plan.env)
    modules = modules_enabled(final)

    log_path = build_dir / "build.log"
    # Only the compile is farmed out: configuring runs the compiler for tiny probes only.
    farm = plan_farm(settings, build_dir, ccache=plan.ccache)
    jobs = settings.jobs or farm.jobs or spec.jobs or os.cpu_count() or 1
    compile_env = {**plan.env, **farm.env}
    compile_argv = [*make, f"-j{jobs}", params.image_target, *(["modules"] if modules else [])]
    _announce(compile_argv, compile_env)
    expected = _expected_objects(cache, plan.inputs[0]) or _kbuild_estimate(tree, final, params.srcarch)
    try:
        with progress.task("kernel: compile", total=expected, unit="objects") as task:
            compiled = _Progress(task)
            run_streaming(compile_argv, stage="kernel", timeout_s=COMPILE_TIMEOUT_S, env=compile_env,
                          log_path=log_path, on_line=compiled.line)
    except ToolError as e:
        raise ToolError(
            f"kernel: build failed: {_first_error(log_path) or 'make ' + _describe(e)} (log: {log_path})",
            argv=e.argv, returncode=e.returncode, stderr_tail=e.stderr_tail, code="kernel-build-failed",
        ) from e
    report_build(build_dir, farm)

    out = cache.out_dir(plan.key)
    staging = staging_dir(out)
    sources = {"image": params.image_path, "vmlinux": "vmlinux", "config": ".config",
               "system_map": "System.map", "build_log": "build.log"}
    release = (build_dir / "include" / "config" / "kernel.release").read_text().strip()
    tools = dict(plan.tools)
    if modules:
        _install_modules(make, build_dir, staging / MODROOT_NAME, release, plan.env)
        tools["depmod"] = tool_identity(cache, "depmod", "--version")
    for name, rel in sources.items():
        os.replace(build_dir / rel, staging / _FILES[name])
    # ccache's stats log and distcc's client log stay beside build.log: where each object came from.
    for name in FARM_LOGS:
        if (build_dir / name).is_file():
            os.replace(build_dir / name, staging / name)
    entry = {
        "key": plan.key,
        "release": release,
        "inputs": inputs,
        "config_sha256": file_sha256(staging / "config"),
        "tools": tools,
        "make": shlex.join(compile_argv),
        "modules": modules,
        # What the next build of this source expects, for its progress bar's total and ETA.
        "objects": compiled.objects,
        "source": list(plan.inputs[0]),
    }
    publish_entry(staging, out, entry)
    # The O= tree is 80+ MB and never reused: a different request is a different key.
    remove_tree(build_dir)
    log.info("kernel: built %s (%d objects) in %.0fs", release, compiled.objects, time.monotonic() - started)


# An object list assignment in a kbuild Makefile: obj-y, lib-$(CONFIG_X), foo-objs, …
_KBUILD_LIST = re.compile(r"^([A-Za-z0-9_.-]+)-(y|m|objs|\$\(CONFIG_([A-Za-z0-9_]+)\))\s*[:+]?=(.*)$")


def _kbuild_estimate(tree: Path, config_text: str, srcarch: str) -> int | None:
    """How many objects ``config_text`` compiles, read from kbuild's own lists: from the
    top-level Kbuild (and the ``libs-y``/``core-y`` directories of the top and arch
    Makefiles) down every directory an enabled list names, counting each ``.o`` of an
    enabled list built from a C file, a composite object (``foo-y := a.o b.o``) by its
    parts.  An estimate (make conditionals are not modelled), good for a first build's ETA."""
    enabled = {name for name, r in parse_config(config_text).items() if r.value in ("y", "m")}

    def lists(path: Path) -> Iterator[tuple[str, list[str]]]:
        try:
            text = path.read_text(errors="replace").replace("\\\n", " ").replace("$(SRCARCH)", srcarch)
        except OSError:
            return
        for line in text.splitlines():
            m = _KBUILD_LIST.match(line.strip())
            if m is not None and (m[3] is None or m[3] in enabled):
                yield m[1], m[4].split()

    todo = [tree]
    for makefile in (tree / "Makefile", tree / "arch" / srcarch / "Makefile"):
        todo += [tree / d for name, words in lists(makefile) if name in ("core", "drivers", "libs")
                 for d in words if d.endswith("/")]
    seen: set[Path] = set()
    parts: dict[tuple[Path, str], set[str]] = {}
    while todo:
        directory = todo.pop()
        if directory in seen or not directory.is_dir():
            continue
        seen.add(directory)
        kbuild = directory / "Kbuild"
        for name, words in lists(kbuild if kbuild.is_file() else directory / "Makefile"):
            todo += [directory / w for w in words if w.endswith("/") and "$" not in w]
            parts.setdefault((directory, name), set()).update(w for w in words if w.endswith(".o"))

    def compiled(directory: Path, obj: str, depth: int = 0) -> int:
        # A composite counts by its parts, and only when an enabled list links it in.
        members = parts.get((directory, obj[:-2])) if depth < 4 else None
        if members is not None:
            return sum(compiled(directory, o, depth + 1) for o in members)
        # make's "CC" lines are what the bar counts: objects built from C sources.
        return 1 if (directory / f"{obj[:-2]}.c").is_file() else 0

    count = sum(compiled(directory, o) for (directory, name), objects in parts.items() if name in ("obj", "lib")
                for o in objects)
    return count or None


def _expected_objects(cache: KernelCache, source: tuple[str, str, str]) -> int | None:
    """The object count of the newest earlier build of the same source, or None.

    A different config of the same tree compiles a similar number, which is close enough
    for an ETA; the entries are few, and entry.json is small."""
    best: tuple[float, int] | None = None
    for path in (cache.root / "kernel" / "out").glob(f"*/{ENTRY_NAME}"):
        try:
            entry = json.loads(path.read_text())
            when = path.stat().st_mtime
        except (OSError, ValueError):
            continue
        objects = entry.get("objects") if isinstance(entry, dict) else None
        if not (isinstance(objects, int) and objects > 0 and entry.get("source") == list(source)):
            continue
        if best is None or when > best[0]:
            best = (when, objects)
    return best[1] if best else None


def modules_enabled(config_text: str) -> bool:
    record = parse_config(config_text).get("MODULES")
    return record is not None and record.value == "y"


def _install_modules(make: Sequence[str], build_dir: Path, modroot: Path, release: str,
                     env: Mapping[str, str]) -> None:
    """``make modules_install`` into ``modroot``: stripped of debug info, indexed by depmod.

    The ``build`` link modules_install leaves points into the O= tree, which is removed
    after the build, so it goes too.
    """
    log_path = build_dir / "modules_install.log"
    argv = [*make, f"INSTALL_MOD_PATH={modroot}", "INSTALL_MOD_STRIP=1", f"DEPMOD={which('depmod')}",
            "modules_install"]
    _announce(argv, env)
    try:
        run_streaming(argv, stage="kernel", timeout_s=INSTALL_TIMEOUT_S, env=env, log_path=log_path)
    except ToolError as e:
        raise ToolError(f"kernel: modules_install failed: {_first_error(log_path) or 'make ' + _describe(e)} "
                        f"(log: {log_path})", argv=e.argv, returncode=e.returncode, stderr_tail=e.stderr_tail,
                        code="kernel-build-failed") from e
    modules_dir = modroot / "lib" / "modules" / release
    for link in ("build", "source"):
        if (modules_dir / link).is_symlink():
            (modules_dir / link).unlink()
    if not (modules_dir / "modules.dep").is_file():
        raise ToolError(f"kernel: modules_install wrote no {modules_dir / 'modules.dep'} (log: {log_path})",
                        argv=argv, code="kernel-build-failed")


def configure(
    spec: KernelSpec,
    params: ArchParams,
    tree: Path,
    build_dir: Path,
    request: ConfigRequest,
    make: Sequence[str],
    env: Mapping[str, str],
) -> str:
    """Write ``build_dir/.config`` from the base and the request; return its text.

    Raises KernelConfigError naming every requested symbol that olddefconfig dropped,
    before anything is compiled.
    """
    config = build_dir / ".config"
    if spec.base_config is not None:
        shutil.copyfile(spec.base_config, config)
    else:
        _make_config(make, spec.base.value, env)
    if spec.trusted_keys is not None:
        shutil.copyfile(spec.trusted_keys, build_dir / TRUSTED_KEYS_NAME)
    config.write_text(merge_into(config.read_text(), request))
    _make_config(make, "olddefconfig", env)
    final = config.read_text()
    dropped = find_dropped(request, final)
    if dropped:
        dropped = explain(dropped, str(tree), params.srcarch, final)
        what = "option was" if len(dropped) == 1 else "options were"
        raise KernelConfigError(
            f"kernel config: {len(dropped)} requested {what} dropped by olddefconfig: "
            + "; ".join(d.describe() for d in dropped),
            code="config-dropped",
        )
    _warn_untrusted(final)
    return final


def _make_config(make: Sequence[str], target: str, env: Mapping[str, str]) -> None:
    argv = [*make, target]
    _announce(argv, env)
    run(argv, stage="kernel", timeout_s=CONFIG_TIMEOUT_S, env=env)


def _announce(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Say which make goals run (-v); under --debug, the exact command with the variables
    that matter, ready to paste into a shell."""
    goals = [a for a in argv[1:] if not a.startswith(("-", "/")) and "=" not in a]
    log.info("kernel: make %s", " ".join(goals))
    # Redacted: CCACHE_REMOTE_STORAGE may carry a password.
    shown = {k: redact(v) for k, v in env.items() if k.startswith(("KBUILD_", "CCACHE_", "DISTCC_", "SOURCE_DATE"))}
    prefix = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(shown.items()))
    log.debug("kernel: $ %s %s", prefix, shlex.join(argv))


def _warn_untrusted(final: str) -> None:
    values = {k: r.value for k, r in parse_config(final).items()}
    if values.get("KEXEC_SIG_FORCE") == "y" and values.get("SYSTEM_TRUSTED_KEYS", '""') == '""':
        log.warning("kernel: KEXEC_SIG_FORCE is on but no trusted keys are compiled in; "
                    "set [kernel] trusted_keys or no kernel can be loaded")


def _describe(e: ToolError) -> str:
    return f"exited with status {e.returncode}" if e.returncode is not None else "did not finish"


def _first_error(log_path: Path) -> str | None:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        if re.search(r"\berror\b|\*\*\* ", line, re.IGNORECASE):
            return line.strip()
    return None


_PHASES = ("compiling", "linking vmlinux", "building the image")


@dataclasses.dataclass(slots=True)
class _Progress:
    """Turns make's output into progress: the count of compiled objects and the phase.

    Phases only move forward: the objects compiled after vmlinux is linked are the
    boot wrapper's (arch/x86/boot), so they belong to building the image.
    """

    task: progress.Task
    objects: int = 0
    phase: int = -1

    def line(self, text: str) -> None:
        if text.startswith("  CC "):
            self.objects += 1
            self.task.advance()
            self._advance(0 if self.phase < 1 else 2)
            if self.objects % PROGRESS_EVERY_OBJECTS == 0:
                log.info("kernel: %s: %d objects compiled", _PHASES[self.phase], self.objects)
        elif text.startswith("  LD ") and "vmlinux" in text:
            self._advance(1)
        elif text.startswith(("  BUILD ", "Kernel: ", "  OBJCOPY arch/arm64/boot/Image")):
            self._advance(2)

    def _advance(self, phase: int) -> None:
        if phase > self.phase:
            self.phase = phase
            self.task.step(f"{_PHASES[phase]} ({self.objects} objects compiled so far)")
