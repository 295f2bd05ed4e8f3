"""The host initramfs of a boot check, built with the initramfs stage's own writer.

Contents:

* ``/init`` — a three-line Python script that hands over to ``mkimage.loader``;
* Debian's ``/usr/bin/python3.11`` and ``_ctypes`` with their ELF closures (the
  initramfs stage resolves them), and only the stdlib modules the loader imports,
  found by running the *target* interpreter on the loader (environment.md §9), shipped
  as sourceless unchecked-hash pycs (every mtime in the archive is the epoch, so
  timestamp pycs would be stale) plus the ``os.py`` landmark;
* the loader package itself, compiled the same way;
* ``/mkspawn/`` — the spawn's kernel, initrd, cmdline, optional dtb/dtbo and the
  loader's arguments.

The host initramfs is two uncompressed newc segments: the part every check shares
(interpreter, runtime, /init), cached by content, then this run's ``/mkspawn/`` payload.

The spawn initrd gets an extra uncompressed newc segment *in front* holding the probe
(``/.mkspawn/probe``) and this run's nonce; ``rdinit=`` selects the probe, which prints
the nonce and execs the bundle's own init.  In front rather than behind: after a
compressed archive the kernel must find where the stream ends, which the legacy lz4
format does not say.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from mkimage.assets import package_dir, package_file
from mkimage.errors import ToolError
from mkimage.initramfs.build import build_initramfs, writer_digest
from mkimage.initramfs.newc import CpioEntry, write_archive
from mkimage.initramfs.userland import tree_entries
from mkimage.qemu.console import NONCE_PREFIX
from mkimage.recipe.model import Compression, InitramfsSpec, NodeItem, NodeType, TreeItem
from mkimage.run import run
from mkimage.store import load_entry, locked, mark_used, publish_entry, staging_dir, stat_key

PYTHON = Path("/usr/bin/python3.11")  # Debian's: libpython linked in, no RUNPATH
STDLIB = Path("/usr/lib/python3.11")
CTYPES_SO = STDLIB / "lib-dynload" / "_ctypes.cpython-311-x86_64-linux-gnu.so"
PYTHON_PACKAGES = "python3.11-minimal and libpython3.11-stdlib"
PACKAGE_DIR = package_dir()  # mkimage/
LOADER_MODULES = ("mkimage.loader.__main__",)
# Imported at start-up for a console in the C locale; the discovery run has C.UTF-8.
EXTRA_STDLIB = ("encodings/ascii.py", "encodings/latin_1.py")
HOST_INIT = package_file("qemu/host-init")
PROBE_SCRIPT = package_file("qemu/probe.sh")
PROBE_DIR = ".mkspawn"
PROBE_PATH = f"/{PROBE_DIR}/probe"
PAYLOAD_DIR = "mkspawn"
LOADER_ARGS = f"{PAYLOAD_DIR}/loader.args"
TOOL_TIMEOUT_S = 120
RUNTIME_VERSION = 1  # bump when the runtime layout changes
BASE_VERSION = 1  # bump when the shared part of the host initramfs changes layout
BASE_NAME = "base.cpio"

# Printed by the interpreter under test: every stdlib file it loaded for the loader.
_DISCOVER = (
    "import _imp, sys\n"
    "sys.path.insert(0, sys.argv[1])\n"
    "for name in sys.argv[2:]: __import__(name)\n"
    "for name, m in list(sys.modules.items()):\n"
    "    f = getattr(m, '__file__', None)\n"
    "    if f and not _imp.is_frozen(name): print(f)\n"
)


@dataclass(frozen=True, slots=True)
class SpawnPayload:
    """What the loader in the guest gets: the bundle's components, as files."""

    kernel: Path
    initrd: Path | None
    cmdline: str
    dtb: Path | None = None
    dtbo: Path | None = None


def _interpreter() -> Path:
    if not (PYTHON.is_file() and CTYPES_SO.is_file()):
        raise ToolError(f"{PYTHON} with ctypes is needed in the check's host initramfs "
                        f"(install the Debian packages {PYTHON_PACKAGES})", code="tool-missing",
                        hint=f"apt-get install {PYTHON_PACKAGES.replace(' and ', ' ')}")
    return PYTHON


def _loader_sources() -> list[Path]:
    return [PACKAGE_DIR / "__init__.py", *sorted((PACKAGE_DIR / "loader").glob("*.py"))]


def runtime_key() -> str:
    """Changes whenever the interpreter or the loader sources change."""
    digest = hashlib.sha256(f"v{RUNTIME_VERSION}".encode())
    st = os.stat(_interpreter())
    digest.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    for path in _loader_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:32]


def python_runtime(cache_dir: Path) -> Path:
    """A tree (usr/lib/python3.11/…) with the stdlib subset and the loader, cached by key."""
    out = cache_dir / f"pyruntime-{runtime_key()}"
    if out.is_dir():
        mark_used(out)
        return out
    tmp = cache_dir / f".{out.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    lib = tmp / STDLIB.relative_to("/")
    for rel in sorted(set(_stdlib_needed()) | set(EXTRA_STDLIB)):
        _copy(STDLIB / rel, lib / rel)
    for src in _loader_sources():
        _copy(src, lib / src.relative_to(PACKAGE_DIR.parent))
    run([_interpreter(), "-S", "-I", "-m", "compileall", "-q", "-b", "--invalidation-mode", "unchecked-hash",
         "-d", f"/{STDLIB.relative_to('/')}", lib], stage="check", timeout_s=TOOL_TIMEOUT_S)
    for py in lib.rglob("*.py"):
        if py != lib / "os.py":  # the landmark by which the interpreter finds its prefix
            py.unlink()
    for d in [tmp, *tmp.rglob("*")]:
        if d.is_dir():
            d.chmod(0o755)
    try:
        os.replace(tmp, out)
    except OSError:  # another check published it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _stdlib_needed() -> list[str]:
    done = run([_interpreter(), "-S", "-I", "-c", _DISCOVER, str(PACKAGE_DIR.parent), *LOADER_MODULES],
               stage="check", timeout_s=TOOL_TIMEOUT_S)
    needed = ["os.py"]
    for line in done.stdout.decode().splitlines():
        path = Path(line)
        if path.suffix == ".py" and path.is_relative_to(STDLIB) and "lib-dynload" not in path.parts:
            needed.append(str(path.relative_to(STDLIB)))
    return needed


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


def spawn_cmdline(cmdline: str, console: str = "ttyS0") -> tuple[str, str]:
    """The spawn's command line with the probe as rdinit, and the init the probe runs next.

    The bundle's own ``rdinit=`` (default /init) becomes the probe's successor;
    ``console=`` (ttyS0; mktty0 for a multikernel spawn) is added when the bundle names
    no console, or the evidence would go nowhere.
    """
    words = cmdline.split()
    following = "/init"
    kept = []
    for word in words:
        if word.startswith("rdinit="):
            following = word.removeprefix("rdinit=")
        else:
            kept.append(word)
    if not any(w.startswith("console=") for w in kept):
        kept.append(f"console={console}")
    kept.append(f"rdinit={PROBE_PATH}")
    return " ".join(kept), following


def probe_segment(nonce: str, following: str) -> bytes:
    """An uncompressed newc archive: the probe script, the nonce, the next init."""
    entries = [
        CpioEntry.file(f"{PROBE_DIR}/probe".encode(), PROBE_SCRIPT.read_bytes(), mode=0o755),
        CpioEntry.file(f"{PROBE_DIR}/nonce".encode(), nonce.encode() + b"\n", mode=0o644),
        CpioEntry.file(f"{PROBE_DIR}/next".encode(), following.encode() + b"\n", mode=0o644),
    ]
    out = io.BytesIO()
    write_archive(entries, out, source_date_epoch=0)
    return out.getvalue()


def stage_payload(payload: SpawnPayload, nonce: str, loader_args: Sequence[str], payload_dir: Path,
                  *, probes: Sequence[Path] = (), console: str = "ttyS0") -> list[str]:
    """Write /mkspawn/… into ``payload_dir``; returns the loader's argument list."""
    _new_dir(payload_dir)
    guest = f"/{PAYLOAD_DIR}"
    staged = _stage_spawn(payload, nonce, payload_dir, console=console)
    args = [*loader_args, "--kernel", f"{guest}/kernel", "--initrd", f"{guest}/initrd",
            "--cmdline-file", f"{guest}/cmdline"]
    args += [a for name in ("dtb", "dtbo") if name in staged for a in (f"--{name}", f"{guest}/{name}")]
    for i, path in enumerate(probes):
        _link_or_copy(path, payload_dir / f"probe-{i}")
        args += ["--probe", f"{guest}/probe-{i}"]
    (payload_dir / "loader.args").write_text("".join(a + "\n" for a in args))
    return args


@dataclass(frozen=True, slots=True)
class SystemSpawnPayload:
    """One spawn of a system as the loader's system mode takes it."""

    name: str
    mk_id: int
    payload: SpawnPayload
    nonce: str


SYSTEM_TREE = "tree.dtb"


def stage_system(tree: Path, spawns: Sequence[SystemSpawnPayload], loader_args: Sequence[str], payload_dir: Path,
                 *, console: str) -> list[str]:
    """Write /mkspawn/… for the loader's system mode: the system's tree, then one
    directory per spawn in load order (kernel, initrd with this run's probe and nonce,
    cmdline, the overlay if the bundle has one, and ``instance``: name, id and the ready
    marker, one a line).  Returns the loader's argument list."""
    _new_dir(payload_dir)
    guest = f"/{PAYLOAD_DIR}"
    _link_or_copy(tree, payload_dir / SYSTEM_TREE)
    args = [*loader_args, "--tree", f"{guest}/{SYSTEM_TREE}"]
    for i, spawn in enumerate(spawns):
        directory = _new_dir(payload_dir / f"spawn-{i}")
        # The instance's own dtb is not staged: the system's tree describes every instance.
        _stage_spawn(replace(spawn.payload, dtb=None), spawn.nonce, directory, console=console)
        (directory / "instance").write_text(f"{spawn.name}\n{spawn.mk_id}\n{NONCE_PREFIX}{spawn.nonce}\n")
        args += ["--spawn", f"{guest}/spawn-{i}"]
    (payload_dir / "loader.args").write_text("".join(a + "\n" for a in args))
    return args


def _new_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


def _stage_spawn(payload: SpawnPayload, nonce: str, directory: Path, *, console: str) -> set[str]:
    """The spawn's kernel, initrd (the probe segment in front), cmdline and trees in
    ``directory``; returns the names of the optional trees written."""
    cmdline, following = spawn_cmdline(payload.cmdline, console)
    _link_or_copy(payload.kernel, directory / "kernel")
    with open(directory / "initrd", "wb") as f:
        f.write(probe_segment(nonce, following))
        if payload.initrd is not None:
            with open(payload.initrd, "rb") as src:
                shutil.copyfileobj(src, f, 1 << 20)
    (directory / "cmdline").write_text(cmdline + "\n")
    staged = set()
    for name, path in (("dtb", payload.dtb), ("dtbo", payload.dtbo)):
        if path is not None:
            _link_or_copy(path, directory / name)
            staged.add(name)
    return staged


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def build_host_initramfs(runtime_dir: Path, payload_dir: Path, out: Path) -> Path:
    """The shared part (see :func:`host_base`), then the payload as a second segment;
    uncompressed, which is fastest to unpack under TCG.  ``out`` is a scratch file of one
    run, removed after it: written without the fsync a published output gets."""
    base = host_base(runtime_dir)
    with open(out, "wb") as f:
        with open(base, "rb") as src:
            shutil.copyfileobj(src, f, 4 << 20)
        write_archive(tree_entries(payload_dir, f"/{PAYLOAD_DIR}", "payload", None), f, source_date_epoch=0)
    return out


def host_base(runtime_dir: Path) -> Path:
    """The host initramfs without the payload: the interpreter and its ELF closure, the
    runtime tree, /init and /dev/urandom.  Kept beside the runtime (``runtime_dir.parent``)
    as a store entry keyed by the runtime, /init and the writer's sources; the stat keys of every host file it
    packed are re-checked on each use, so a library upgrade rebuilds it."""
    cache_dir = runtime_dir.parent
    key = hashlib.sha256(f"v{BASE_VERSION}|{writer_digest()}|{runtime_dir.name}|".encode()
                         + HOST_INIT.read_bytes()).hexdigest()
    out = cache_dir / "host-initramfs" / key
    if _base_is_current(out, key):
        return out / BASE_NAME
    with locked(cache_dir / "locks" / f"host-initramfs-{key}.lock", "the check's host initramfs", stage="check"):
        if not _base_is_current(out, key):
            staging = staging_dir(out)
            result = build_initramfs(_base_spec(runtime_dir), staging / BASE_NAME, source_date_epoch=0)
            keys = {name: stat_key("file", Path(name)) for name, _ in result.inputs}
            publish_entry(staging, out, {"key": key, "stat_keys": keys})
    return out / BASE_NAME


def _base_is_current(out: Path, key: str) -> bool:
    entry = load_entry(out, key, stage="check")
    if entry is None:
        return False
    try:
        return all(stat_key("file", Path(name)) == known for name, known in entry["stat_keys"].items())
    except OSError:
        return False


def _base_spec(runtime_dir: Path) -> InitramfsSpec:
    return InitramfsSpec(
        init=HOST_INIT,
        busybox=False,
        binaries=[_interpreter(), CTYPES_SO],
        trees=[TreeItem(src=runtime_dir, dst="/")],
        # The interpreter seeds its hash from getrandom(GRND_NONBLOCK) and, while the
        # early-boot entropy pool is not ready, from /dev/urandom; /init starts before
        # anything mounts devtmpfs, and -I ignores PYTHONHASHSEED.
        nodes=[NodeItem(path="dev/urandom", type=NodeType.CHAR, major=1, minor=9, mode=0o666)],
        compression=Compression.NONE,
    )
