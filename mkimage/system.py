"""`mkspawn build SYSTEM.toml -o DIR` and `mkspawn verify DIR`: every spawn of one host.

Above the stages, like pipeline.py: the system loader (recipe/system.py) has already
refused every conflict between instances, so nothing here decides placement.  A build
compiles each distinct kernel once, one after another (each `make` already uses every
core, and the kernel cache is content addressed, so spawns sharing a config share the
build), then packs the bundles in a small thread pool, compiles the pool baseline and
writes the signed system manifest.  Everything goes into a temp directory beside DIR,
which is renamed into place only when complete.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from mkimage.bundle.manifest import Signature
from mkimage.bundle.sign import make_signature
from mkimage.bundle.system_manifest import (
    MAX_SYSTEM_MANIFEST_BYTES,
    SYSTEM_MANIFEST,
    SYSTEM_SIGNATURE_DIR,
    FileRef,
    SpawnEntry,
    SystemManifest,
    check_system_signatures,
    signature_member,
)
from mkimage.bundle.verify import (
    BundleReport,
    SignatureReport,
    inspect_bundle,
    open_regular,
    require_trusted,
    verify_bundle,
)
from mkimage.context import default_cache_root
from mkimage.devicetree.compile import compile_dts
from mkimage.devicetree.dts import DtsNode, render_dts
from mkimage.devicetree.schema import instance_tree, pool_tree, resolve_instance
from mkimage.digests import file_sha256
from mkimage.errors import FormatError, InputError, UsageError, VerifyError
from mkimage.kernel.build import KernelBuild, build_kernel
from mkimage.outputs import write_atomic
from mkimage.pipeline import BuildResult, build_bundle
from mkimage.recipe.model import AbiProfile, KernelSpec
from mkimage.recipe.system import Spawn, System
from mkimage.recipe.userconfig import BuildSettings
from mkimage.signing.keys import PrivateKey, key_id
from mkimage.signing.trust import TrustStore

if TYPE_CHECKING:  # the check and load side is imported where it runs: a build needs none of it
    from mkimage.loader.multikernel import Host
    from mkimage.loader.system import SpawnReport
    from mkimage.qemu.check import CheckOptions, CheckResult, HostKernel, Mode
    from mkimage.qemu.hostfs import SpawnPayload

log = logging.getLogger("mkspawn")
_T = TypeVar("_T")

BASELINE_MEMBER = "baseline.dtb"
BUNDLE_DIR = "bundles"


@dataclass(frozen=True, slots=True)
class SystemBuildResult:
    out_dir: Path
    manifest: SystemManifest
    manifest_sha256: str
    signed_by: tuple[str, ...]
    bundles: tuple[BuildResult, ...]
    kernels_compiled: tuple[str, ...]  # cache keys this build compiled (not cache hits)
    kernels_used: tuple[str, ...]  # every distinct cache key, in spawn order

    @property
    def bundles_reused(self) -> tuple[str, ...]:
        """The instances whose bundle from the earlier build in DIR was kept as it was."""
        return tuple(e.instance for e, b in zip(self.manifest.spawns, self.bundles, strict=True) if b.reused)


def baseline_files(system: System) -> list[Path]:
    """The spawns' [devicetree] baseline_dts files, each once, in spawn order: the
    system's baseline is the pool every recipe describes, their extra nodes included."""
    files = (s.recipe.devicetree.baseline_dts for s in system.spawns)
    return list(dict.fromkeys(f for f in files if f is not None))


def _v2_instance_nodes(spawn: Spawn) -> tuple[DtsNode, ...]:
    """/instances/<name> of the spawn's own v2 tree, the node its bundle's dtb carries."""
    inst = resolve_instance(spawn.recipe)
    assert inst is not None  # a system spawn always has CPUs and memory
    return next(c.children for c in instance_tree(inst).children if c.name == "instances")


def baseline_source(system: System, *, inline_user_files: bool = True) -> str:
    """The pool baseline .dts: every CPU, chunk and device of the host's pool, then the
    recipes' baseline_dts nodes (inlined, or by ``/include/`` so dtc names their lines)."""
    pool = system.pool
    tree = pool_tree(system.profile, pool.cpus, pool.memory, list(pool.devices.items()))
    if system.profile is AbiProfile.V2:
        # A v2 host takes one tree naming every instance (multikernel-abi.md §7.1): there
        # are no overlays to create them one by one.
        instances = [node for spawn in system.spawns for node in _v2_instance_nodes(spawn)]
        tree = replace(tree, children=(*tree.children, DtsNode("instances", (), tuple(instances))))
        what = "write once to /sys/fs/multikernel/device_tree (the pool and every instance), then load each"
    else:
        what = "write once to /sys/fs/multikernel/device_tree, then each instance's overlay"
    comment = (f"system {system.meta.name} {system.meta.version}: pool baseline, ABI profile {system.profile}\n"
               f"{what} in the system manifest's order\n"
               "Generated by mkspawn; see multikernel-abi.md section 7.")
    files = baseline_files(system)
    if not inline_user_files:
        return render_dts(tree, comment=comment, includes=files)
    merged = "".join(f"\n// merged from {f.name}\n{f.read_text(encoding='utf-8').rstrip()}\n" for f in files)
    return render_dts(tree, comment=comment) + merged


# ---- logging: which spawn a line is about ---------------------------------------------

_current = threading.local()


class _SpawnPrefix(logging.Filter):
    """Prefix each record logged inside a spawn's build with the instance name, so the
    interleaved lines of parallel builds stay readable."""

    def filter(self, record: logging.LogRecord) -> bool:
        name = getattr(_current, "name", None)
        if name is not None and not getattr(record, "mkspawn_prefixed", False):
            record.msg = f"[{name}] {record.msg}"
            record.mkspawn_prefixed = True
        return True


@contextlib.contextmanager
def _prefixed_logs() -> Iterator[None]:
    prefix = _SpawnPrefix()
    log.addFilter(prefix)
    try:
        yield
    finally:
        log.removeFilter(prefix)


@contextlib.contextmanager
def _as_spawn(name: str) -> Iterator[None]:
    _current.name = name
    try:
        yield
    finally:
        _current.name = None


# ---- build ------------------------------------------------------------------------------

def _check_output_dir(out_dir: Path) -> None:
    """DIR may be new, empty, or an earlier system build (replaced whole); nothing else
    is overwritten."""
    if not os.path.lexists(out_dir):
        return
    if not out_dir.is_dir() or out_dir.is_symlink():
        raise UsageError(f"{out_dir}: exists and is not a directory", code="bad-output")
    if any(out_dir.iterdir()) and not (out_dir / SYSTEM_MANIFEST).is_file():
        raise UsageError(f"{out_dir}: exists, is not empty and holds no {SYSTEM_MANIFEST}; refusing to replace it",
                         code="exists")


@dataclass(frozen=True, slots=True)
class _Kernels:
    by_spawn: tuple[KernelBuild | None, ...]  # None: a prebuilt [kernel] image
    used: tuple[str, ...]
    compiled: tuple[str, ...]


def _prepare_kernels(system: System, cache_root: Path, farm: BuildSettings | None = None) -> _Kernels:
    """Compile each distinct kernel of the system once, before any spawn is packed; the
    spawns get the build as loaded here, so a cache entry is checked once, not per spawn."""
    done: list[tuple[tuple[KernelSpec, str, int], KernelBuild]] = []
    by_spawn: list[KernelBuild | None] = []
    for spawn in system.spawns:
        recipe = spawn.recipe
        epoch = recipe.metadata.source_date_epoch
        assert epoch is not None
        if recipe.kernel.source is None:
            by_spawn.append(None)
            continue
        wanted = (recipe.kernel, recipe.metadata.arch.value, epoch)
        built = next((b for w, b in done if w == wanted), None)
        if built is None:
            with _as_spawn(spawn.instance.name or str(spawn.index)):
                built = build_kernel(recipe.kernel, arch=wanted[1], cache_root=cache_root, source_date_epoch=epoch,
                                     farm=farm)
            done.append((wanted, built))
        by_spawn.append(built)
    return _Kernels(tuple(by_spawn), tuple(dict.fromkeys(b.cache_key for _, b in done)),
                    tuple(b.cache_key for _, b in done if not b.cache_hit))


def _bundle_name(spawn: Spawn) -> str:
    return f"{BUNDLE_DIR}/{spawn.instance.name}.mkb"


def _build_spawn(spawn: Spawn, work: Path, signers: Sequence[PrivateKey], cache_root: Path,
                 kernel: KernelBuild | None, earlier: Path | None) -> BuildResult:
    """``earlier``: the system directory being replaced, whose bundle of this instance is
    kept when it is exactly what this build would write (build_bundle's ``reuse``)."""
    assert spawn.instance.name is not None
    with _as_spawn(spawn.instance.name):
        return build_bundle(spawn.recipe, work / _bundle_name(spawn), signers, cache_root=cache_root,
                            kernel_build=kernel, reuse=None if earlier is None else earlier / _bundle_name(spawn))


def _entry(spawn: Spawn, result: BuildResult) -> SpawnEntry:
    inst = spawn.instance
    assert inst.name is not None and inst.id is not None and inst.memory_bytes is not None
    return SpawnEntry(
        instance=inst.name, id=inst.id, recipe_name=result.manifest.recipe_name,
        recipe_version=result.manifest.recipe_version, kernel_release=result.manifest.kernel_release,
        cpus=tuple(inst.cpus), memory_bytes=inst.memory_bytes, numa_nodes=tuple(inst.numa_nodes),
        devices=tuple(inst.devices), bundle=FileRef(_bundle_name(spawn), result.size, result.sha256),
    )


def build_system(system: System, out_dir: Path, signers: Sequence[PrivateKey] = (), *,
                 cache_root: Path | None = None, jobs: int | None = None,
                 farm: BuildSettings | None = None) -> SystemBuildResult:
    out_dir = Path(os.path.abspath(out_dir))
    _check_output_dir(out_dir)
    cache_root = cache_root or default_cache_root()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    earlier = out_dir if (out_dir / SYSTEM_MANIFEST).is_file() else None
    try:
        with _prefixed_logs():
            kernels = _prepare_kernels(system, cache_root, farm)
            (work / BUNDLE_DIR).mkdir()
            workers = jobs or os.cpu_count() or 1
            results = _in_parallel([functools.partial(_build_spawn, s, work, signers, cache_root, k, earlier)
                                    for s, k in zip(system.spawns, kernels.by_spawn, strict=True)],
                                   workers, "mkspawn-spawn")
        baseline_path = work / BASELINE_MEMBER
        compile_dts(baseline_source(system, inline_user_files=False), baseline_path,
                    user_files=baseline_files(system))
        manifest = SystemManifest.build(
            name=system.meta.name, version=system.meta.version, abi_profile=system.profile,
            baseline=FileRef(BASELINE_MEMBER, baseline_path.stat().st_size, file_sha256(baseline_path)),
            spawns=[_entry(s, r) for s, r in zip(system.spawns, results, strict=True)],
        )
        data = manifest.to_bytes()
        write_atomic(work / SYSTEM_MANIFEST, data)
        for key in signers:
            raw = make_signature(key, data)
            write_atomic(work / signature_member(Signature.from_bytes(raw)), raw)
        _replace_dir(work, out_dir)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    log.info("wrote %s", out_dir)
    return SystemBuildResult(out_dir, manifest, file_sha256(out_dir / SYSTEM_MANIFEST),
                             tuple(key_id(k.public_key()) for k in signers), tuple(results),
                             kernels_compiled=kernels.compiled, kernels_used=kernels.used)


def _replace_dir(work: Path, out_dir: Path) -> None:
    """Rename the finished directory into place; an earlier build is moved aside first
    and removed only once the new one is in place."""
    os.chmod(work, 0o755)  # mkdtemp's 0700 would be the directory's mode after the rename
    old: Path | None = None
    if os.path.lexists(out_dir):
        old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".old", dir=out_dir.parent))
        os.rename(out_dir, old / "previous")
    try:
        os.rename(work, out_dir)
    except BaseException:
        if old is not None:
            os.rename(old / "previous", out_dir)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def summary(result: SystemBuildResult) -> dict[str, object]:
    return {
        "system": str(result.out_dir),
        "name": result.manifest.name,
        "version": result.manifest.version,
        "manifest_sha256": result.manifest_sha256,
        "signed_by": list(result.signed_by),
        "spawns": [{"instance": e.instance, "bundle": e.bundle.path, "sha256": e.bundle.sha256}
                   for e in result.manifest.spawns],
        "kernels_used": list(result.kernels_used),
        "kernels_compiled": list(result.kernels_compiled),
        "bundles_reused": list(result.bundles_reused),
    }


# ---- verify -------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SystemReport:
    directory: Path
    manifest: SystemManifest
    signatures: tuple[SignatureReport, ...]
    bundles: tuple[BundleReport, ...]

    @property
    def trusted_by(self) -> tuple[str, ...]:
        return tuple(s.keyid for s in self.signatures if s.status.value == "trusted")

    def to_dict(self) -> dict[str, object]:
        return {
            "system": str(self.directory),
            "manifest": self.manifest.to_dict(),
            "signatures": [{"keyid": s.keyid, "scheme": s.scheme, "status": str(s.status)} for s in self.signatures],
            "bundles": [b.to_dict() for b in self.bundles],
        }


def _read_manifest(path: Path) -> bytes:
    with open_regular(path, "system manifest") as f:
        data = f.read(MAX_SYSTEM_MANIFEST_BYTES + 1)
    if len(data) > MAX_SYSTEM_MANIFEST_BYTES:
        raise VerifyError(f"{path}: larger than {MAX_SYSTEM_MANIFEST_BYTES} bytes", code="manifest-too-large")
    return data


def _signatures(directory: Path) -> list[bytes]:
    sig_dir = directory / SYSTEM_SIGNATURE_DIR
    if not sig_dir.is_dir():
        return []
    found = []
    for path in sorted(sig_dir.iterdir()):
        with open_regular(path, "signature") as f:
            found.append(f.read(64 * 1024))
    return found


def _check_file(directory: Path, ref: FileRef) -> Path:
    path = directory / ref.path
    if not path.is_file():
        raise VerifyError(f"{path}: missing (named by {SYSTEM_MANIFEST})", code="missing-member")
    size = path.stat().st_size
    if size != ref.size:
        raise VerifyError(f"{path}: observed {size} bytes, expected {ref.size}", code="size-mismatch")
    digest = file_sha256(path)
    if digest != ref.sha256:
        raise VerifyError(f"{path}: observed sha256 {digest}, expected {ref.sha256}", code="digest-mismatch")
    return path


def _check_bundle_matches(path: Path, entry: SpawnEntry, report: BundleReport, system: SystemManifest) -> None:
    """The bundle must be the spawn the system manifest says it is."""
    m = report.manifest
    observed = (m.recipe_name, m.recipe_version, m.kernel_release, str(m.abi_profile))
    expected = (entry.recipe_name, entry.recipe_version, entry.kernel_release, str(system.abi_profile))
    if observed != expected:
        raise VerifyError(f"{path}: observed {' '.join(observed)}, expected {' '.join(expected)} "
                          f"for instance {entry.instance!r}", code="system-mismatch")
    inst = report.handover.instance if report.handover is not None else None
    if inst is not None and (inst.name, inst.id, tuple(inst.cpus)) != (entry.instance, entry.id, entry.cpus):
        raise VerifyError(f"{path}: hands over instance {inst.name!r} (id {inst.id}, cpus {list(inst.cpus)}), "
                          f"expected {entry.instance!r} (id {entry.id}, cpus {list(entry.cpus)})",
                          code="system-mismatch")


def verify_system(target: Path, trust: TrustStore, *, state_file: Path | None = None) -> SystemReport:
    """The system manifest (signed by a trusted key), the baseline, and every bundle it
    names, each verified as `mkspawn verify` would and matched against its entry."""
    return _check_system(target, trust, state_file=state_file, require_trust=True)


def inspect_system(target: Path, trust: TrustStore) -> SystemReport:
    """As verify, but signatures (of the manifest and of each bundle) are reported, not required."""
    return _check_system(target, trust, state_file=None, require_trust=False)


def _check_system(target: Path, trust: TrustStore, *, state_file: Path | None, require_trust: bool) -> SystemReport:
    directory, manifest_path = (target, target / SYSTEM_MANIFEST) if target.is_dir() else (target.parent, target)
    if not manifest_path.exists():
        raise InputError(f"{directory}: no {SYSTEM_MANIFEST}: not a system directory", code="no-such-file")
    data = _read_manifest(manifest_path)
    try:
        manifest = SystemManifest.from_bytes(data)
        sigs = check_system_signatures(data, _signatures(directory), trust)
    except FormatError as e:
        raise VerifyError(f"{manifest_path}: {e.message}", code=e.code) from None
    if require_trust:
        require_trusted(manifest_path, sigs, trust)
    _check_file(directory, manifest.baseline)
    bundles = []
    for entry in manifest.spawns:
        path = _check_file(directory, entry.bundle)
        report = verify_bundle(path, trust, state_file=state_file) if require_trust else inspect_bundle(path, trust)
        _check_bundle_matches(path, entry, report, manifest)
        bundles.append(report)
    return SystemReport(directory, manifest, sigs, tuple(bundles))


def render_system(report: SystemReport) -> str:
    m = report.manifest
    lines = [f"system:         {report.directory} ({m.name} {m.version}, ABI profile {m.abi_profile})",
             f"baseline:       {m.baseline.path} ({m.baseline.size} bytes, sha256 {m.baseline.sha256[:16]})", "",
             f"{'#':<3} {'INSTANCE':<14} {'ID':>4}  {'CPUS (APIC)':<16} {'MEMORY':>12}  {'DEVICES':<12} "
             f"{'KERNEL':<18} BUNDLE SHA256"]
    for n, e in enumerate(m.spawns, start=1):
        lines.append(f"{n:<3} {e.instance:<14} {e.id:>4}  {','.join(map(str, e.cpus)):<16} {e.memory_bytes:>#12x}  "
                     f"{','.join(e.devices) or '-':<12} {e.kernel_release:<18} {e.bundle.sha256[:16]}")
    return "\n".join(lines) + "\n"



# ---- load ---------------------------------------------------------------------------------

def _system_tree(checked: SystemReport, directory: Path) -> tuple[Path, list[tuple[str, int, SpawnPayload]]]:
    """The system's tree and each spawn's payload, written under ``directory`` from the
    verified files and re-checked against the digests verification saw."""
    from mkimage.qemu.check import Mode, extract_payload  # the load and check side only

    manifest = checked.manifest
    directory.mkdir(parents=True, exist_ok=True)
    tree = directory / BASELINE_MEMBER
    tree.write_bytes(_read_verified(checked.directory / manifest.baseline.path, manifest.baseline))
    overlays = manifest.abi_profile is not AbiProfile.V2
    spawns = []
    for entry, bundle in zip(manifest.spawns, checked.bundles, strict=True):
        payload = extract_payload(bundle.path, bundle.manifest, directory / entry.instance,
                                  mode=Mode.MULTIKERNEL, profile=manifest.abi_profile)
        if overlays and payload.dtbo is None:
            raise VerifyError(f"{bundle.path}: no instance overlay (dtbo) for instance {entry.instance!r}",
                              code="missing-component")
        spawns.append((entry.instance, entry.id, payload))
    return tree, spawns


def load_system(target: Path, trust: TrustStore, report: SpawnReport, *, state_file: Path | None = None,
                host: Host | None = None) -> list[str]:
    """Verify the system, then on this multikernel host write its tree and create, load
    and start every instance in the manifest's order: the loader's start_system, the
    sequence the multikernel check runs in its QEMU host.  ``host`` is the running kernel
    unless a test passes its stand-in."""
    from mkimage.loader import multikernel
    from mkimage.loader.system import SystemSpawn, start_system

    checked = verify_system(target, trust, state_file=state_file)
    profile = multikernel.PROFILES[str(checked.manifest.abi_profile)]
    with tempfile.TemporaryDirectory(prefix="mkspawn-load-system-") as tmp:
        tree, payloads = _system_tree(checked, Path(tmp))
        spawns = [SystemSpawn(name=name, mk_id=mk_id, kernel=str(p.kernel),
                              initrd=str(p.initrd) if p.initrd else None, cmdline=p.cmdline,
                              dtbo=p.dtbo.read_bytes() if p.dtbo else None)
                  for name, mk_id, p in payloads]
        return [name for name, _ in start_system(profile, tree.read_bytes(), spawns, report, host)]


def _read_verified(path: Path, ref: FileRef) -> bytes:
    """The bytes as read now, re-checked: the file may have changed since it was verified."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise VerifyError(f"{path}: changed after verification", code="changed-after-verify")
    return data


# ---- check --------------------------------------------------------------------------------

# Each boot is a QEMU under TCG that keeps one core busy; on a small machine more than two
# at a time only makes every boot slower and the deadlines tighter.
CHECK_JOBS = 2


@dataclass(frozen=True, slots=True)
class SpawnCheck:
    instance: str
    result: CheckResult | None  # None: not loaded (the loader stopped at an earlier spawn)


@dataclass(frozen=True, slots=True)
class SystemCheck:
    directory: Path
    mode: Mode
    spawns: tuple[SpawnCheck, ...]

    @property
    def ok(self) -> bool:
        return all(s.result is not None and s.result.ok for s in self.spawns)

    @property
    def failed(self) -> tuple[SpawnCheck, ...]:
        return tuple(s for s in self.spawns if s.result is None or not s.result.ok)

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "system": str(self.directory),
            "mode": str(self.mode),
            "spawns": [{"instance": s.instance, "booted": s.result is not None,
                        **(s.result.to_dict() if s.result is not None else {"ok": False})}
                       for s in self.spawns],
        }


def check_system(checked: SystemReport, host: HostKernel, options: CheckOptions, *, cache_root: Path,
                 verify_s: float = 0.0, jobs: int = CHECK_JOBS) -> SystemCheck:
    """Boot-check every spawn of ``checked`` (which ``verify_system`` accepted).

    kexec mode: the spawn replaces its host, so each gets the single-bundle check on a
    QEMU host of its own, at most ``jobs`` at a time.  Multikernel mode: ONE host, whose
    loader writes the system's tree and then creates, loads and starts every instance in
    the manifest's order (as `mkspawn load DIR`), each judged by its own nonce.
    """
    from mkimage.qemu import hostfs
    from mkimage.qemu.check import Mode, check_bundle
    from mkimage.qemu.system import check_system_payloads

    log_root = options.log_dir or Path(tempfile.mkdtemp(prefix="mkspawn-check-system-"))
    # Built once before the boots: concurrent first builds of the runtime would share a temp name.
    hostfs.python_runtime(cache_root / "check")
    entries = list(zip(checked.manifest.spawns, checked.bundles, strict=True))

    def one(entry: SpawnEntry, bundle: BundleReport) -> CheckResult:
        with _as_spawn(entry.instance):
            return check_bundle(bundle.path, bundle, host, replace(options, log_dir=log_root / entry.instance),
                                cache_root=cache_root, verify_s=verify_s)

    results: list[CheckResult | None] = []
    if options.mode is Mode.KEXEC:
        with _prefixed_logs():
            results = list(_in_parallel([functools.partial(one, e, b) for e, b in entries], jobs, "mkspawn-check"))
    else:
        with tempfile.TemporaryDirectory(prefix="mkspawn-extract-") as tmp:
            started = time.monotonic()
            tree, payloads = _system_tree(checked, Path(tmp))
            timings = {"verify": verify_s, "extract": time.monotonic() - started}
            results = check_system_payloads(tree, payloads, host, replace(options, log_dir=log_root),
                                            cache_root=cache_root, profile=checked.manifest.abi_profile,
                                            timings=timings)
    spawns = tuple(SpawnCheck(e.instance, r) for (e, _), r in zip(entries, results, strict=True))
    return SystemCheck(checked.directory, options.mode, spawns)


def _in_parallel(calls: Sequence[Callable[[], _T]], jobs: int, name: str) -> list[_T]:
    """Each call's result in order, at most ``jobs`` at once; the first failure cancels
    what has not started and is raised."""
    workers = max(1, min(jobs, len(calls)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        futures = [pool.submit(call) for call in calls]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
