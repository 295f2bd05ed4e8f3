"""`mkspawn check`: verify a bundle, then prove a real kernel's kexec loader takes it.

Steps, each timed: verify (the same ``verify_bundle`` as ``mkspawn verify``), extract
the components (re-checked against the verified manifest's digests), resolve the host
kernel (given, or built by the kernel stage from a host recipe, cached), build the host
initramfs, boot.  The result says which stage the boot reached, the errno and what it
means, whether this run's nonce came back, and the last console lines.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mkimage.bundle.container import iter_component, read_bundle
from mkimage.bundle.manifest import Manifest, Role
from mkimage.bundle.verify import BundleReport
from mkimage.errors import InputError, ToolError, VerifyError
from mkimage.kernel.build import build_kernel
from mkimage.qemu import hostfs, hostkernel
from mkimage.qemu.console import Errno, Outcome, ProbeVerdict, Stage
from mkimage.qemu.harness import BootRequest, boot
from mkimage.qemu.params import X86_64_KEXEC, X86_64_MULTIKERNEL, QemuParams
from mkimage.recipe.load import load_recipe
from mkimage.recipe.model import AbiProfile

DEFAULT_HOST_RECIPE = "builtin:recipes/qemu-host.toml"
DEFAULT_TIMEOUT_S = 90.0
log = logging.getLogger("mkspawn")
NONCE_BYTES = 8


class Mode(enum.StrEnum):
    KEXEC = "kexec"
    MULTIKERNEL = "multikernel"

    @property
    def params(self) -> QemuParams:
        return X86_64_MULTIKERNEL if self is Mode.MULTIKERNEL else X86_64_KEXEC

    @property
    def spawn_console(self) -> str:
        return "mktty0" if self is Mode.MULTIKERNEL else "ttyS0"


@dataclass(frozen=True, slots=True)
class CheckOptions:
    mode: Mode = Mode.KEXEC
    profile: AbiProfile | None = None  # multikernel mode; default: the bundle's, else mk2
    timeout_s: float = DEFAULT_TIMEOUT_S
    expect: str | None = None  # regex the spawn's console must show after the nonce
    params: QemuParams | None = None  # default: the mode's
    probes: tuple[Path, ...] = ()  # extra images whose load verdict is reported, not booted
    log_dir: Path | None = None  # default: a new temp dir (kept: it holds the console log)


@dataclass(frozen=True, slots=True)
class CheckResult:
    mode: Mode
    host_kernel: Path
    outcome: Outcome
    stages: tuple[tuple[Stage, float | None], ...]
    errno: Errno | None
    unsupported: str | None
    panic: str | None
    nonce: str
    nonce_seen: bool
    expect: str | None
    probes: tuple[ProbeVerdict, ...]
    console_tail: tuple[str, ...]
    console_log: Path
    timings_s: Mapping[str, float] = field(default_factory=dict)
    bundle: Path | None = None

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.PASSED

    @property
    def reached(self) -> Stage | None:
        return self.stages[-1][0] if self.stages else None

    def to_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "bundle": str(self.bundle) if self.bundle else None,
            "mode": str(self.mode),
            "host_kernel": str(self.host_kernel),
            "outcome": str(self.outcome),
            "stage_reached": str(self.reached) if self.reached else None,
            "stages": [{"stage": str(s), "t_s": None if t is None else round(t, 3)} for s, t in self.stages],
            "errno": None if self.errno is None else {
                "name": self.errno.name, "number": self.errno.number, "class": self.errno.kind,
                "meaning": self.errno.meaning, "op": self.errno.op},
            "unsupported": self.unsupported,
            "panic": self.panic,
            "nonce": self.nonce,
            "nonce_seen": self.nonce_seen,
            "expect": self.expect,
            "expect_matched": any(s is Stage.EXPECT for s, _ in self.stages),
            "probes": [{"path": p.path, "accepted": p.accepted, "errno": p.errno} for p in self.probes],
            "timings_s": {k: round(v, 3) for k, v in self.timings_s.items()},
            "console_log": str(self.console_log),
            "console_excerpt": list(self.console_tail),
        }

    def summary(self) -> str:
        """One line: the verdict, or why it failed."""
        if self.ok:
            return (f"{self.mode} check passed: loaded, booted, nonce {self.nonce} seen"
                    + (f", expect /{self.expect}/ matched" if self.expect else "")
                    + f" ({self.timings_s.get('boot', 0):.1f}s boot)")
        reached = self.reached or "nothing"
        if self.outcome is Outcome.UNSUPPORTED_HOST:
            return f"{self.unsupported}"
        if self.errno is not None:
            return (f"{self.mode} check failed at stage {reached}: {self.errno.op} returned "
                    f"{self.errno.name} ({self.errno.number}): {self.errno.meaning}")
        detail = {
            Outcome.TIMEOUT: f"no verdict within {self.timings_s.get('deadline', 0):g}s",
            Outcome.HOST_CRASHED: f"host kernel panicked: {self.panic}",
            Outcome.SPAWN_CRASHED: f"spawn kernel panicked: {self.panic}",
            Outcome.LOADER_CRASHED: "the loader's Python failed in the host (see console)",
            Outcome.EXPECT_MISSED: f"the spawn never printed /{self.expect}/",
            Outcome.STOPPED_EARLY: "QEMU exited before a verdict",
            Outcome.NO_OUTPUT: "QEMU printed nothing",
        }.get(self.outcome, str(self.outcome))
        return f"{self.mode} check failed at stage {reached}: {detail}"


@dataclass(frozen=True, slots=True)
class HostKernel:
    image: Path
    origin: str  # "given" or the recipe it was built from
    cache_hit: bool | None = None


def resolve_host_kernel(kernel: Path | None, recipe: Path | None, *, cache_root: Path,
                        overrides: Sequence[str] = (), mode: Mode | None = None) -> HostKernel:
    """The given host kernel, or the one a host recipe (with ``--set``-style
    ``overrides``, e.g. its trusted_keys) builds through the kernel cache.

    With neither, a kexec check (``mode``) boots Debian's prebuilt cloud kernel
    (mkimage/qemu/hostkernel.py): a cold cache then need not compile a host first.
    Without apt it builds the tiny host recipe instead, and says so.
    """
    if kernel is not None:
        if not kernel.is_file():
            raise InputError(f"{kernel}: no such host kernel", code="no-such-file")
        return HostKernel(kernel, "given")
    if recipe is None and not overrides and mode is Mode.KEXEC:
        prebuilt = _prebuilt_host(cache_root)
        if prebuilt is not None:
            return prebuilt
    recipe = recipe or Path(DEFAULT_HOST_RECIPE)
    model = load_recipe(recipe, overrides)
    if model.kernel.source is None:
        if model.kernel.image is None:
            raise InputError(f"{recipe}: the host recipe has neither [kernel] source nor image", code="bad-host")
        return HostKernel(model.kernel.image, str(recipe))
    build = build_kernel(model.kernel, arch=model.metadata.arch.value, cache_root=cache_root,
                         source_date_epoch=model.metadata.source_date_epoch or 0)
    return HostKernel(build.image, str(recipe), build.cache_hit)


def _prebuilt_host(cache_root: Path) -> HostKernel | None:
    try:
        return HostKernel(hostkernel.debian_kernel(cache_root), hostkernel.ENTRY_KEY)
    except ToolError as e:
        log.warning("check: no prebuilt host kernel (%s); building the tiny host from %s instead",
                    e.message, DEFAULT_HOST_RECIPE)
        return None


def check_payload(payload: hostfs.SpawnPayload, host: HostKernel, options: CheckOptions, *,
                  cache_root: Path, profile: AbiProfile = AbiProfile.NONE,
                  timings: dict[str, float] | None = None, bundle: Path | None = None) -> CheckResult:
    """Boot ``host``, have mkspawn's loader load ``payload`` in it, and judge the console."""
    timings = dict(timings or {})
    started = time.monotonic()
    nonce = secrets.token_hex(NONCE_BYTES)
    log_dir = options.log_dir or Path(tempfile.mkdtemp(prefix="mkspawn-check-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=log_dir))
    try:
        runtime = hostfs.python_runtime(cache_root / "check")
        loader_args = [str(options.mode)]
        if options.mode is Mode.MULTIKERNEL:
            chosen = options.profile or (profile if profile is not AbiProfile.NONE else AbiProfile.MK2)
            loader_args += ["--profile", str(chosen), "--ready", f"MKSPAWN-NONCE={nonce}",
                            "--timeout", f"{options.timeout_s:g}"]
        hostfs.stage_payload(payload, nonce, loader_args, work / "payload", probes=options.probes,
                             console=options.mode.spawn_console)
        initrd = hostfs.build_host_initramfs(runtime, work / "payload", work / "host-initrd.cpio")
        timings["prepare"] = time.monotonic() - started
        expect = re.compile(options.expect) if options.expect else None
        result = boot(BootRequest(options.params or options.mode.params, host.image, initrd, options.timeout_s,
                                  log_dir / "console.log", nonce, expect))
    finally:
        shutil.rmtree(work, ignore_errors=True)  # megabytes of initramfs; the log stays
    timings["boot"] = result.streamed.elapsed_s
    timings["deadline"] = options.timeout_s
    parser = result.parser
    stages = tuple(sorted(parser.stages.items(), key=lambda item: list(Stage).index(item[0])))
    return CheckResult(
        mode=options.mode, host_kernel=host.image, outcome=result.outcome, stages=stages, errno=parser.errno,
        unsupported=parser.unsupported, panic=parser.panic, nonce=nonce,
        nonce_seen=Stage.SPAWN_USERSPACE in parser.stages, expect=options.expect, probes=tuple(parser.probes),
        console_tail=result.tail, console_log=result.log_path, timings_s=timings, bundle=bundle)


def extract_payload(bundle: Path, manifest: Manifest, out_dir: Path, *, mode: Mode,
                    profile: AbiProfile) -> hostfs.SpawnPayload:
    """Write the components the loader needs, each re-checked against ``manifest``
    (the verified one), so a bundle swapped after verification is caught."""
    out_dir.mkdir(parents=True, exist_ok=True)
    by_role = {c.role: c for c in manifest.components}
    kernel_role = Role.KERNEL
    if mode is Mode.MULTIKERNEL and profile is AbiProfile.MK2 and Role.VMLINUX in by_role:
        kernel_role = Role.VMLINUX  # mk2 loads the ELF vmlinux (multikernel-abi.md §2)
    if kernel_role not in by_role:
        raise VerifyError(f"{bundle}: no {kernel_role} component", code="missing-component")
    files: dict[Role, Path] = {}
    with bundle.open("rb") as f:
        contents = read_bundle(f)
        for role in (kernel_role, Role.INITRD, Role.CMDLINE, Role.DTB, Role.DTBO):
            component = by_role.get(role)
            if component is None:
                continue
            path = out_dir / str(role)
            digest = hashlib.sha256()
            with path.open("wb") as out:
                for chunk in iter_component(f, contents, component.path):
                    digest.update(chunk)
                    out.write(chunk)
            if digest.hexdigest() != component.sha256:
                raise VerifyError(f"{bundle}: {component.path} changed after verification "
                                  f"(sha256 {digest.hexdigest()}, verified {component.sha256})",
                                  code="changed-after-verify")
            files[role] = path
    cmdline = files[Role.CMDLINE].read_text("utf-8").strip() if Role.CMDLINE in files else ""
    return hostfs.SpawnPayload(files[kernel_role], files.get(Role.INITRD), cmdline,
                               files.get(Role.DTB), files.get(Role.DTBO))


def check_bundle(bundle: Path, report: BundleReport, host: HostKernel, options: CheckOptions, *,
                 cache_root: Path, verify_s: float = 0.0) -> CheckResult:
    """Boot-check ``bundle``, which ``verify_bundle`` accepted as ``report``.

    Verifying is the caller's first step, before resolving the host kernel: a bundle
    that is refused must be refused in seconds, not after a host kernel build.
    """
    timings = {"verify": verify_s}
    profile = AbiProfile(str(report.manifest.abi_profile))
    chosen = options.profile or profile
    with tempfile.TemporaryDirectory(prefix="mkspawn-extract-") as tmp:
        started = time.monotonic()
        payload = extract_payload(bundle, report.manifest, Path(tmp), mode=options.mode, profile=chosen)
        timings["extract"] = time.monotonic() - started
        return check_payload(payload, host, options, cache_root=cache_root, profile=profile, timings=timings,
                             bundle=bundle)
