"""The multikernel protocol (multikernel-abi.md §3–§6), behind an ABI-profile switch.

Flow for one instance (current generation): mount the multikernel filesystem, write
the baseline DTB once, write the instance overlay, load with
KEXEC_MULTIKERNEL | KEXEC_MK_ID(id), poll the instance status by re-reading it (the
file raises no kernfs notification, so poll() would never wake), open /dev/mktty and
select the instance *before* starting it so early output is kept, start, then halt
(forced if the spawn does not stop), unload, delete.

Not run against a real multikernel kernel (none can be built here): tests drive it against
tests/loader/kernfs_double.py, a stand-in read from the kernel's source; the stock-host
boundary — no multikernel filesystem — is tested for real by the QEMU check.
"""

from __future__ import annotations

import errno
import os
import struct
import time

from mkimage.loader import syscalls
from mkimage.loader.errnos import LoaderError, UnsupportedHost

# Not typing.TYPE_CHECKING: importing typing (with re, functools, enum …) into the
# guest costs more than the whole loader; mypy honours a constant of this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Report = Callable[[str, str], None]  # (stage, detail) → the caller prints a marker

# Out-of-tree uapi values; KEXEC_MULTIKERNEL collides with mainline's newer
# KEXEC_FILE_NO_CMA (0x10) and KEXEC_MK_ID(1) with KEXEC_FILE_FORCE_DTB (0x20), which is
# why the flag is never sent to a kernel without the multikernel filesystem.
KEXEC_MULTIKERNEL = 0x10
KEXEC_MK_ID_SHIFT = 5
KEXEC_MK_ID_MASK = 0xFFE0
MK_ID_MAX = 2047
LINUX_REBOOT_CMD_MULTIKERNEL = 0x4D4B4C49
LINUX_REBOOT_CMD_MULTIKERNEL_HALT = 0x4D4B4C48
LINUX_REBOOT_CMD_MULTIKERNEL_HALT_FORCE = 0x4D4B4C46

MKTTY = "/dev/mktty"
FILESYSTEMS = "/proc/filesystems"


class Profile:
    """What differs between multikernel generations (multikernel-abi.md §2)."""

    def __init__(self, name: str, *, root: str, overlays: bool, loaded_state: str, can_halt: bool) -> None:
        self.name = name
        self.root = root
        self.overlays = overlays  # baseline + overlays/new (mk2 on); v2 writes one DTB
        self.loaded_state = loaded_state  # v2 said "loading"
        self.can_halt = can_halt  # no stop command before mk2


PROFILES: dict[str, Profile] = {
    "v2": Profile("v2", root="/sys/fs/multikernel", overlays=False, loaded_state="loading", can_halt=False),
    "mk2": Profile("mk2", root="/sys/fs/multikernel", overlays=True, loaded_state="loaded", can_halt=True),
    "mk-master": Profile("mk-master", root="/sys/fs/multikernel", overlays=True, loaded_state="loaded",
                         can_halt=True),
}


def mk_id_flags(mk_id: int) -> int:
    if not 1 <= mk_id <= MK_ID_MAX:
        raise LoaderError("KEXEC_MK_ID", errno.EINVAL, f"instance id {mk_id} outside 1..{MK_ID_MAX}")
    return KEXEC_MULTIKERNEL | ((mk_id << KEXEC_MK_ID_SHIFT) & KEXEC_MK_ID_MASK)


class LiveHost:
    """The running kernel as the loader sees it: the multikernel filesystem under
    ``root`` (paths below are relative to it), kexec_file_load, reboot and /dev/mktty.

    tests/loader/kernfs_double.py is a stand-in with the same methods, reproducing the
    behaviour of kernel/multikernel/{kernfs,overlay,baseline,dts}.c, because no
    multikernel kernel can run where the tests do.  Methods raise OSError as the
    kernel's files do; the protocol functions below turn them into LoaderError."""

    def __init__(self, root: str, filesystems: str = FILESYSTEMS) -> None:
        self.root = root
        self.filesystems = filesystems

    def _path(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def mounted(self) -> bool:
        return os.path.exists(self._path("device_tree"))

    def has_filesystem(self) -> bool:
        return has_filesystem(self.filesystems)

    def mount(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        syscalls.mount("none", self.root, "multikernel")

    def exists(self, rel: str) -> bool:
        return os.path.exists(self._path(rel))

    def listdir(self, rel: str) -> list[str]:
        return os.listdir(self._path(rel))

    def read(self, rel: str) -> bytes:
        with open(self._path(rel), "rb") as f:
            return f.read()

    def write(self, rel: str, data: bytes) -> int:
        """One write(2) at offset 0; returns what the kernel took (maybe less)."""
        fd = os.open(self._path(rel), os.O_WRONLY)
        try:
            return os.write(fd, data)
        finally:
            os.close(fd)

    def rmdir(self, rel: str) -> None:
        os.rmdir(self._path(rel))

    def kexec_file_load(self, kernel: str | None, initrd: str | None, cmdline: str | None, flags: int) -> None:
        kernel_fd = os.open(kernel, os.O_RDONLY | os.O_CLOEXEC) if kernel else -1
        initrd_fd = os.open(initrd, os.O_RDONLY | os.O_CLOEXEC) if initrd else -1
        try:
            syscalls.kexec_file_load(kernel_fd, initrd_fd, None if cmdline is None else cmdline.encode(), flags)
        finally:
            for fd in (kernel_fd, initrd_fd):
                if fd >= 0:
                    os.close(fd)

    def reboot(self, cmd: int, mk_id: int) -> None:
        syscalls.reboot(cmd, mk_id)

    def open_console(self, mk_id: int) -> int:
        fd = os.open(MKTTY, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
        os.write(fd, f"{mk_id}\n".encode())
        return fd


if TYPE_CHECKING:
    from typing import Protocol

    class Host(Protocol):
        """What the protocol needs of a host: LiveHost, or the tests' stand-in."""

        root: str

        def mounted(self) -> bool: ...
        def has_filesystem(self) -> bool: ...
        def mount(self) -> None: ...
        def exists(self, rel: str) -> bool: ...
        def listdir(self, rel: str) -> list[str]: ...
        def read(self, rel: str) -> bytes: ...
        def write(self, rel: str, data: bytes) -> int: ...
        def rmdir(self, rel: str) -> None: ...
        def kexec_file_load(self, kernel: str | None, initrd: str | None, cmdline: str | None,
                            flags: int) -> None: ...
        def reboot(self, cmd: int, mk_id: int) -> None: ...
        def open_console(self, mk_id: int) -> int: ...


def has_filesystem(filesystems: str = FILESYSTEMS) -> bool:
    try:
        with open(filesystems, "rb") as f:
            return any(line.split()[-1:] == [b"multikernel"] for line in f)
    except OSError:
        return False


def ensure_mounted(host: Host) -> None:
    """Mount the multikernel filesystem unless it is; UnsupportedHost on a stock kernel."""
    if host.mounted():
        return
    if not host.has_filesystem():
        raise UnsupportedHost(
            "host kernel lacks multikernel support: no 'multikernel' filesystem in /proc/filesystems "
            "(KEXEC_MULTIKERNEL is not sent to it)")
    try:
        host.mount()
    except OSError as e:
        raise LoaderError("mount", e.errno or 0, host.root) from None


def _read_text(host: Host, rel: str) -> str:
    return host.read(rel).decode("utf-8", "replace").strip()


def write_baseline(host: Host, dtb: bytes) -> bool:
    """Write the pool's baseline DTB; False if one is already in place (accepted once:
    baseline.c answers EBUSY)."""
    try:
        written = host.write("device_tree", dtb)
    except OSError as e:
        if e.errno in (errno.EBUSY, errno.EEXIST, errno.EALREADY):
            return False
        raise LoaderError("write-baseline", e.errno or 0, "device_tree") from None
    if written != len(dtb):
        raise LoaderError("write-baseline", errno.EFBIG, f"the kernel took {written} of {len(dtb)} bytes")
    return True


# ---- the overlay of one instance -----------------------------------------------------------

_FDT_MAGIC = 0xD00DFEED
_FDT_BEGIN_NODE, _FDT_END_NODE, _FDT_PROP, _FDT_NOP, _FDT_END = 1, 2, 3, 4, 9


def overlay_instance_name(dtbo: bytes) -> str | None:
    """The ``instance-name`` of the overlay's ``instance-create`` node, the property
    overlay.c (mk_overlay_instance_name) creates the instance from; None if there is none.

    A walk of the structure block with struct only: the loader runs where the FDT codec
    (mkimage/devicetree/fdt.py) and its imports are not available."""
    try:
        magic, _total, off_struct, off_strings = struct.unpack_from(">4I", dtbo, 0)
        if magic != _FDT_MAGIC:
            return None
        pos, path = off_struct, []
        while True:
            (token,) = struct.unpack_from(">I", dtbo, pos)
            pos += 4
            if token == _FDT_BEGIN_NODE:
                end = dtbo.index(b"\0", pos)
                path.append(dtbo[pos:end])
                pos = (end + 4) & ~3
            elif token == _FDT_END_NODE:
                path.pop()
            elif token == _FDT_PROP:
                length, nameoff = struct.unpack_from(">2I", dtbo, pos)
                value = dtbo[pos + 8:pos + 8 + length]
                pos = (pos + 8 + length + 3) & ~3
                name = dtbo[off_strings + nameoff:dtbo.index(b"\0", off_strings + nameoff)]
                if path[-1:] == [b"instance-create"] and name == b"instance-name":
                    return value.rstrip(b"\0").decode("utf-8")
            elif token != _FDT_NOP:
                return None  # FDT_END or garbage: no instance-create in this overlay
    except (struct.error, ValueError, IndexError, UnicodeDecodeError):
        return None


def _tx_number(name: str) -> int:
    return int(name[3:]) if name.startswith("tx_") and name[3:].isdigit() else -1


def _transactions(host: Host) -> set[str]:
    return {n for n in host.listdir("overlays") if _tx_number(n) >= 0}


def apply_overlay(host: Host, dtbo: bytes, name: str | None) -> str:
    """Write an overlay; returns the tx_N directory the kernel made for it.

    overlay.c records every transaction it attempts, refused ones included (status
    "failed", and the write itself may still succeed), so a transaction that did not
    apply is rolled back here with rmdir before the error is raised.  One write(2)
    must carry the whole overlay: overlays/new has no atomic write length, so kernfs
    hands the handler at most a page, and a second write at a non-zero offset is
    refused (mk_overlay_new_write)."""
    if name is not None and host.exists(f"instances/{name}"):
        # Rolling back a failed instance-create destroys whatever instance has that name
        # (overlay.c mk_overlay_undo_instance_create), so never let it fail that way.
        raise LoaderError("write-overlay", errno.EEXIST,
                          f"instance {name} already exists on this host; not writing an overlay that creates it")
    before = _transactions(host)
    try:
        written, refused = host.write("overlays/new", dtbo), 0
    except OSError as e:
        written, refused = 0, e.errno or errno.EIO
    created = sorted(_transactions(host) - before, key=_tx_number)
    # Another writer may have raced us: ours is the one holding our bytes (tx_N/dtbo).
    taken = dtbo[:written] if written else dtbo
    mine = [tx for tx in created if host.read(f"overlays/{tx}/dtbo") == taken] or created[-1:]
    if not mine:
        raise LoaderError("write-overlay", refused or errno.ENOENT,
                          "" if refused else "the write succeeded but no overlays/tx_N appeared")
    tx = mine[0]
    state = _read_text(host, f"overlays/{tx}/status")
    problem = ""
    if written and written != len(dtbo):
        refused = errno.EFBIG
        problem = (f"the kernel took {written} of {len(dtbo)} bytes in one write (overlays/new accepts one "
                   "page per write and no continuation)")
    elif state != "applied":
        refused = refused or errno.EINVAL
        problem = f"{tx} status is {state!r}, expected 'applied'"
    if problem:
        raise LoaderError("write-overlay", refused, f"{problem}; {_discard(host, tx)}")
    return tx


def _discard(host: Host, tx: str) -> str:
    try:
        host.rmdir(f"overlays/{tx}")
    except OSError as e:
        return f"rolling {tx} back failed too ({errno.errorcode.get(e.errno or 0, e.errno)}); it stays behind"
    return f"{tx} rolled back and removed"


def instance_id(host: Host, name: str) -> int:
    return int(_read_text(host, f"instances/{name}/id"))


def status(host: Host, name: str) -> str:
    try:
        return _read_text(host, f"instances/{name}/status")
    except FileNotFoundError:
        return "absent"


def wait_status(host: Host, name: str, wanted: str, timeout_s: float, poll_s: float = 0.05) -> str:
    """Re-read the status until it is ``wanted`` or the time is up; returns the last one."""
    deadline = time.monotonic() + timeout_s
    state = status(host, name)
    while state != wanted and time.monotonic() < deadline:
        time.sleep(poll_s)
        state = status(host, name)
    return state


def load(host: Host, kernel: str, initrd: str | None, cmdline: str, mk_id: int) -> None:
    flags = mk_id_flags(mk_id)
    if initrd is None:
        flags |= syscalls.KEXEC_FILE_NO_INITRAMFS
    _call("kexec_file_load", lambda: host.kexec_file_load(kernel, initrd, cmdline, flags), f"flags={flags:#x}")


def unload(host: Host, mk_id: int) -> None:
    flags = syscalls.KEXEC_FILE_UNLOAD | mk_id_flags(mk_id)
    _call("kexec_file_load", lambda: host.kexec_file_load(None, None, None, flags), f"flags={flags:#x}")


def open_console(host: Host, mk_id: int) -> int:
    """Open the multikernel console and select the instance (before starting it)."""
    try:
        return host.open_console(mk_id)
    except OSError as e:
        raise LoaderError("open-mktty", e.errno or 0) from None


def start(host: Host, mk_id: int) -> None:
    _call("reboot", lambda: host.reboot(LINUX_REBOOT_CMD_MULTIKERNEL, mk_id), "start")


def halt(host: Host, mk_id: int, *, force: bool = False) -> None:
    cmd = LINUX_REBOOT_CMD_MULTIKERNEL_HALT_FORCE if force else LINUX_REBOOT_CMD_MULTIKERNEL_HALT
    _call("reboot", lambda: host.reboot(cmd, mk_id), "halt")


def _call(op: str, action: Callable[[], None], detail: str) -> None:
    try:
        action()
    except OSError as e:  # LiveHost raises LoaderError itself; a double raises what the kernel would
        raise LoaderError(op, e.errno or 0, detail) from None


def delete(host: Host, tx: str) -> None:
    """Roll the instance's overlay back, which removes the instance."""
    try:
        host.rmdir(f"overlays/{tx}")
    except OSError as e:
        raise LoaderError("delete-instance", e.errno or 0, tx) from None


def read_console(fd: int, until: Callable[[str], bool], timeout_s: float,
                 on_line: Callable[[str], None]) -> bool:
    """Forward the spawn's console lines until ``until(line)`` or the deadline."""
    deadline = time.monotonic() + timeout_s
    pending = b""
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            time.sleep(0.05)
            continue
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for raw in lines:
            line = raw.decode("utf-8", "replace").rstrip("\r")
            on_line(line)
            if until(line):
                return True
    return False


class Plan:
    """One instance's life cycle: what to load and how long to wait at each step."""

    def __init__(self, *, profile: Profile, kernel: str, initrd: str | None, cmdline: str,
                 dtb: bytes | None, dtbo: bytes | None, name: str | None, mk_id: int | None,
                 ready_marker: str, timeout_s: float) -> None:
        self.profile = profile
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.dtb = dtb
        self.dtbo = dtbo
        self.name = name
        self.mk_id = mk_id
        self.ready_marker = ready_marker
        self.timeout_s = timeout_s


def instance_name(plan: Plan) -> str | None:
    """The name the overlay creates (what we wrote), checked against --name if both are given.
    Not tx_N/instance: the kernel keeps the first fragment's target-path there
    (overlay.c tx_instance_seq_show), e.g. "/instances"."""
    written = overlay_instance_name(plan.dtbo) if plan.dtbo is not None and plan.profile.overlays else None
    if written is not None and plan.name is not None and written != plan.name:
        raise LoaderError("instance", errno.EINVAL, f"the overlay creates {written!r}, not {plan.name!r}")
    return written or plan.name


def run_instance(plan: Plan, report: Report, host: Host | None = None) -> bool:
    """Create, load, start, watch, stop, unload and delete one instance.

    Returns True when the spawn printed ``plan.ready_marker`` on its console.
    Raises UnsupportedHost on a kernel without multikernel support, LoaderError when
    a step is refused.  Teardown runs for every step that was reached.  ``host`` is
    the running kernel unless a test passes its stand-in.
    """
    profile = plan.profile
    host = host if host is not None else LiveHost(profile.root)
    ensure_mounted(host)
    report("mounted", host.root)
    if plan.dtb is not None:
        report("baseline", "written" if write_baseline(host, plan.dtb) else "already present")
    name = instance_name(plan)
    if name is None:
        raise LoaderError("instance", errno.ENOENT, "no instance name (give one, or an overlay that creates it)")
    tx = None
    if plan.dtbo is not None and profile.overlays:
        tx = apply_overlay(host, plan.dtbo, name)
        report("overlay", f"{tx} instance={name} target={_read_text(host, f'overlays/{tx}/instance')}")
    try:
        if not host.exists(f"instances/{name}"):
            raise LoaderError("instance", errno.ENOENT, f"no instances/{name} on this host")
        mk_id = plan.mk_id if plan.mk_id is not None else instance_id(host, name)
        report("instance", f"name={name} id={mk_id} status={status(host, name)}")
        return _load_and_run(host, plan, name, mk_id, report)
    finally:
        if tx is not None:
            delete(host, tx)
            report("deleted", tx)


def _load_and_run(host: Host, plan: Plan, name: str, mk_id: int, report: Report) -> bool:
    profile = plan.profile
    load(host, plan.kernel, plan.initrd, plan.cmdline, mk_id)
    state = wait_status(host, name, profile.loaded_state, 5.0)
    report("loaded", f"status={state}")
    try:
        console = open_console(host, mk_id)
        try:
            start(host, mk_id)
            report("started", f"status={wait_status(host, name, 'active', 5.0)}")
            seen = read_console(console, lambda line: plan.ready_marker in line, plan.timeout_s,
                                lambda line: report("console", line))
        finally:
            os.close(console)
        if profile.can_halt:
            _stop(host, profile, name, mk_id, report)
        return seen
    finally:
        if status(host, name) != "active":
            unload(host, mk_id)
            report("unloaded", f"status={status(host, name)}")


def _stop(host: Host, profile: Profile, name: str, mk_id: int, report: Report) -> None:
    halt(host, mk_id)
    state = wait_status(host, name, profile.loaded_state, 5.0)
    if state == "active":
        halt(host, mk_id, force=True)
        state = wait_status(host, name, profile.loaded_state, 5.0)
        report("halted", f"forced status={state}")
    else:
        report("halted", f"status={state}")
