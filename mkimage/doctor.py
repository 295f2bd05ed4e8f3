"""What this host can do for mkspawn: tools, KVM, cache and trust store, in one report.

Every probe runs the tool for real (through mkimage/run.py, under a short timeout): a
binary that is on PATH but crashes, or hangs, is reported unusable, not present.  Each
missing piece names the Debian package that provides it.  Nothing here boots a VM, so
KVM is at best "present, unproven".
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mkimage.cachecare import tree_usage
from mkimage.context import default_cache_root
from mkimage.errors import MkspawnError, ToolError
from mkimage.kernel.cache import KernelCache
from mkimage.kernel.farm import REMOTE_COUNTERS, ccache_counters, probe_hosts, probe_remote
from mkimage.recipe.userconfig import default_config_path, load_user_config
from mkimage.run import TOOL_PACKAGES, run, which

PROBE_TIMEOUT_S = 10.0
KVM_DEVICE = Path("/dev/kvm")


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    purpose: str
    version_args: tuple[str, ...] = ("--version",)
    # Only reported when installed: nothing in a build needs it.
    optional: bool = False
    # Further programs the purpose needs along with this one.
    companions: tuple[str, ...] = ()


TOOLS = (
    Tool("gcc", "compiles spawn kernels"),
    Tool("make", "drives kernel builds"),
    Tool("ccache", "speeds up kernel rebuilds"),
    Tool("distcc", "compiles kernels on [build] distcc_hosts", optional=True),
    Tool("qemu-system-x86_64", "boots x86_64 bundles in `mkspawn check`"),
    Tool("qemu-system-aarch64", "boots arm64 bundles in `mkspawn check`"),
    Tool("dtc", "compiles devicetree overlays"),
    Tool("iasl", "compiles ACPI tables", ("-v",)),
    Tool("sbsign", "signs kernels for Secure Boot / kexec signature checks"),
    Tool("busybox", "the initramfs userland (must be static)", ("--help",)),
    Tool("cpio", "lists initramfs archives"),
    Tool("apt-get", "fetches Debian's prebuilt host kernel for `mkspawn check`", companions=("apt-cache", "dpkg-deb")),
    Tool("docker-registry", "a local OCI registry for push/pull tests", optional=True),
)
# Packages of the tools mkimage/run.py does not call itself.
EXTRA_PACKAGES = {"apt-get": "apt", "apt-cache": "apt", "dpkg-deb": "dpkg", "docker-registry": "docker-registry",
                  "distcc": "distcc"}

_VERSION_WORD = re.compile(r"\bversion:?\s+v?(\d[\w.+~:-]*)", re.IGNORECASE)
_VERSION_NUMBER = re.compile(r"\bv?(\d+\.\d+[\w.+~:-]*)")


def package_of(tool: str) -> str | None:
    return TOOL_PACKAGES.get(tool) or EXTRA_PACKAGES.get(tool)


@dataclass(frozen=True, slots=True)
class ToolReport:
    name: str
    purpose: str
    package: str | None
    path: str | None = None
    version: str | None = None
    usable: bool = False
    problem: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "purpose": self.purpose, "package": self.package, "path": self.path,
                "version": self.version, "usable": self.usable, "problem": self.problem}


@dataclass(frozen=True, slots=True)
class KvmReport:
    device: str
    present: bool
    accessible: bool

    @property
    def status(self) -> str:
        if not self.present:
            return "absent"
        # Only a real boot proves KVM works (nested or restricted hosts open the device and
        # then fail every vCPU), and doctor does not boot.
        return "present, unproven" if self.accessible else "present, not accessible to this user"

    def to_json(self) -> dict[str, object]:
        return {"device": self.device, "present": self.present, "accessible": self.accessible,
                "status": self.status}


@dataclass(frozen=True, slots=True)
class CacheReport:
    root: str
    exists: bool
    bytes: int
    files: int

    def to_json(self) -> dict[str, object]:
        return {"root": self.root, "exists": self.exists, "bytes": self.bytes, "files": self.files}


@dataclass(frozen=True, slots=True)
class TrustReport:
    directory: str
    exists: bool
    keys: tuple[str, ...] = ()
    problem: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"directory": self.directory, "exists": self.exists, "keys": list(self.keys), "problem": self.problem}


@dataclass(frozen=True, slots=True)
class FarmReport:
    """The [build] settings of config.toml: the remote cache and distcc hosts, whether they
    answer now, and what the local ccache has got from the remote cache so far."""

    config: str  # the file read (or looked for)
    exists: bool
    problem: str | None = None  # the file's first mistake, as a build would refuse it
    remote_cache: str | None = None  # redacted
    remote_problem: str | None = None  # None: it answered
    hosts: tuple[tuple[str, str | None], ...] = ()  # (host spec, None or why it did not answer)
    ccache_remote: dict[str, int] = field(default_factory=dict)  # cumulative remote_storage_* counters

    def to_json(self) -> dict[str, object]:
        return {"config": self.config, "exists": self.exists, "problem": self.problem,
                "remote_cache": None if self.remote_cache is None else
                {"url": self.remote_cache, "reachable": self.remote_problem is None, "problem": self.remote_problem},
                "distcc_hosts": [{"host": h, "reachable": p is None, "problem": p} for h, p in self.hosts],
                "ccache_remote": self.ccache_remote}


@dataclass(frozen=True, slots=True)
class Diagnosis:
    tools: tuple[ToolReport, ...]
    kvm: KvmReport
    cache: CacheReport
    trust: TrustReport
    farm: FarmReport
    missing_packages: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return all(t.usable for t in self.tools) and self.trust.problem is None and self.farm.problem is None

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "tools": [t.to_json() for t in self.tools], "kvm": self.kvm.to_json(),
                "cache": self.cache.to_json(), "trust": self.trust.to_json(), "farm": self.farm.to_json(),
                "missing_packages": list(self.missing_packages)}


def parse_version(text: str) -> str | None:
    """The version a tool's banner states: after the word "version" when there is one,
    else the first dotted number (``GNU Make 4.3``, ``BusyBox v1.35.0``)."""
    for line in text.splitlines():
        match = _VERSION_WORD.search(line) or _VERSION_NUMBER.search(line)
        if match:
            return match.group(1).rstrip(".,")
    return None


def probe_tool(tool: Tool) -> ToolReport:
    package = package_of(tool.name)
    try:
        path = which(tool.name)
    except ToolError:
        return ToolReport(tool.name, tool.purpose, package, problem="not found")
    try:
        done = run([path, *tool.version_args], stage="doctor", timeout_s=PROBE_TIMEOUT_S, check=False)
    except ToolError as e:
        return ToolReport(tool.name, tool.purpose, package, path, problem=e.message)
    text = (done.stdout + b"\n" + done.stderr).decode("utf-8", "replace")
    version = parse_version(text)
    problem = None
    if done.returncode != 0 or version is None:
        problem = f"`{Path(path).name} {' '.join(tool.version_args)}` exited with status {done.returncode}"
        if version is None:
            problem += " and stated no version"
    elif tool.name == "busybox":
        problem = _dynamic_problem(Path(path))
    if problem is None:
        absent = [c for c in tool.companions if shutil.which(c) is None]
        if absent:
            problem = f"needs {', '.join(absent)} too (not found)"
            package = ", ".join(sorted({package_of(c) or c for c in absent}))
    return ToolReport(tool.name, tool.purpose, package, path, version, problem is None, problem)


def _dynamic_problem(path: Path) -> str | None:
    """A dynamically linked busybox cannot run in an initramfs without its libraries."""
    from mkimage.initramfs.elf import ELF_READ_ERRORS, read_elf

    try:
        interp = read_elf(str(path.resolve())).interp
    except ELF_READ_ERRORS as e:
        return f"cannot read its ELF headers: {e}"
    return f"dynamically linked (interpreter {interp}), the initramfs needs a static one" if interp else None


def kvm_report(device: Path = KVM_DEVICE) -> KvmReport:
    present = device.exists()
    return KvmReport(str(device), present, present and os.access(device, os.R_OK | os.W_OK))


def cache_report(root: Path) -> CacheReport:
    if not root.is_dir():
        return CacheReport(str(root), False, 0, 0)
    usage = tree_usage(root)
    return CacheReport(str(root), True, usage.bytes, usage.files)


def trust_report(directory: Path) -> TrustReport:
    from mkimage.signing.trust import load_trust_store

    if not directory.is_dir():
        return TrustReport(str(directory), False)
    try:
        store = load_trust_store(directory, must_exist=True)
    except MkspawnError as e:
        return TrustReport(str(directory), True, problem=e.message)
    return TrustReport(str(directory), True,
                       tuple(f"{kid}  {key.source.name}" for kid, key in sorted(store.keys.items())))


def farm_report(env: Mapping[str, str], cache_root: Path, config_file: Path | None = None) -> FarmReport:
    """A bad config file is reported, not raised: doctor is where one looks for what is wrong."""
    try:
        loaded = load_user_config(config_file, env=env)
    except MkspawnError as e:
        named = config_file or Path(env.get("MKSPAWN_CONFIG") or default_config_path(env))
        return FarmReport(str(named), named.is_file(), problem=e.render())
    settings = loaded.settings
    remote = settings.remote()
    hosts = settings.hosts()
    counters = ccache_counters(KernelCache(cache_root).ccache_dir) if settings.farm else {}
    return FarmReport(
        str(loaded.path or default_config_path(env)), loaded.path is not None,
        remote_cache=None if remote is None else remote.shown,
        remote_problem=None if remote is None else probe_remote(remote),
        hosts=tuple((h.spec, p) for h, p in zip(hosts, probe_hosts(hosts), strict=True) if h.kind != "option"),
        ccache_remote={k: v for k, v in counters.items() if k in REMOTE_COUNTERS},
    )


def diagnose(env: Mapping[str, str] | None = None, *, trust_dir: Path | None = None,
             config_file: Path | None = None) -> Diagnosis:
    from mkimage.signing.trust import default_trust_dir

    env = os.environ if env is None else env
    # Each probe mostly waits for a process to start (QEMU takes a while), so run them together.
    with ThreadPoolExecutor(max_workers=len(TOOLS)) as pool:
        probed = list(pool.map(probe_tool, TOOLS))
    tools = [r for tool, r in zip(TOOLS, probed, strict=True) if not (tool.optional and r.problem == "not found")]
    missing = sorted({p for t in tools if not t.usable and t.package for p in t.package.split(", ")})
    return Diagnosis(
        tools=tuple(tools),
        kvm=kvm_report(),
        cache=cache_report(default_cache_root(env)),
        trust=trust_report(trust_dir or default_trust_dir(env)),
        farm=farm_report(env, default_cache_root(env), config_file),
        missing_packages=tuple(missing),
    )
