"""The multikernel protocol (multikernel-abi.md §3–§6), behind an ABI-profile switch.

Flow for one instance (current generation): mount the multikernel filesystem, write
the baseline DTB once, write the instance overlay, load with
KEXEC_MULTIKERNEL | KEXEC_MK_ID(id), poll the instance status by re-reading it (the
file raises no kernfs notification, so poll() would never wake), open /dev/mktty and
select the instance *before* starting it so early output is kept, start, then halt
(forced if the spawn does not stop), unload, delete.

Not tested against a real multikernel kernel (none can be built here); the stock-host
boundary — no multikernel filesystem — is tested for real by the QEMU check.
"""

from __future__ import annotations

import errno
import os
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


def has_filesystem(filesystems: str = FILESYSTEMS) -> bool:
    try:
        with open(filesystems, "rb") as f:
            return any(line.split()[-1:] == [b"multikernel"] for line in f)
    except OSError:
        return False


def ensure_mounted(profile: Profile, filesystems: str = FILESYSTEMS) -> None:
    """Mount the multikernel filesystem unless it is; UnsupportedHost on a stock kernel."""
    if os.path.exists(os.path.join(profile.root, "device_tree")):
        return
    if not has_filesystem(filesystems):
        raise UnsupportedHost(
            "host kernel lacks multikernel support: no 'multikernel' filesystem in /proc/filesystems "
            "(KEXEC_MULTIKERNEL is not sent to it)")
    os.makedirs(profile.root, exist_ok=True)
    syscalls.mount("none", profile.root, "multikernel")


def _write(path: str, data: bytes, op: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as e:
        raise LoaderError(op, e.errno or 0, path) from None
    try:
        os.write(fd, data)
    except OSError as e:
        raise LoaderError(op, e.errno or 0, path) from None
    finally:
        os.close(fd)


def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "replace").strip()


def write_baseline(profile: Profile, dtb: bytes) -> bool:
    """Write the pool's baseline DTB; False if one is already in place (accepted once)."""
    path = os.path.join(profile.root, "device_tree")
    try:
        _write(path, dtb, "write-baseline")
    except LoaderError as e:
        if e.errno in (errno.EBUSY, errno.EEXIST, errno.EALREADY):
            return False
        raise
    return True


def apply_overlay(profile: Profile, dtbo: bytes) -> str:
    """Write an instance overlay; returns the transaction directory the kernel made."""
    overlays = os.path.join(profile.root, "overlays")
    before = set(os.listdir(overlays))
    _write(os.path.join(overlays, "new"), dtbo, "write-overlay")
    created = sorted(n for n in set(os.listdir(overlays)) - before if n.startswith("tx_"))
    if not created:
        raise LoaderError("write-overlay", errno.ENOENT, "no overlays/tx_N appeared")
    tx = created[-1]
    state = _read_text(os.path.join(overlays, tx, "status"))
    if state != "applied":
        raise LoaderError("write-overlay", errno.EINVAL, f"{tx} status is {state!r}, expected 'applied'")
    return tx


def overlay_instance(profile: Profile, tx: str) -> str:
    return _read_text(os.path.join(profile.root, "overlays", tx, "instance"))


def instance_id(profile: Profile, name: str) -> int:
    return int(_read_text(os.path.join(profile.root, "instances", name, "id")))


def status(profile: Profile, name: str) -> str:
    try:
        return _read_text(os.path.join(profile.root, "instances", name, "status"))
    except FileNotFoundError:
        return "absent"


def wait_status(profile: Profile, name: str, wanted: str, timeout_s: float, poll_s: float = 0.05) -> str:
    """Re-read the status until it is ``wanted`` or the time is up; returns the last one."""
    deadline = time.monotonic() + timeout_s
    state = status(profile, name)
    while state != wanted and time.monotonic() < deadline:
        time.sleep(poll_s)
        state = status(profile, name)
    return state


def load(kernel_fd: int, initrd_fd: int, cmdline: str, mk_id: int) -> None:
    flags = mk_id_flags(mk_id)
    if initrd_fd < 0:
        flags |= syscalls.KEXEC_FILE_NO_INITRAMFS
    syscalls.kexec_file_load(kernel_fd, initrd_fd, cmdline.encode(), flags)


def unload(mk_id: int) -> None:
    syscalls.kexec_file_load(-1, -1, None, syscalls.KEXEC_FILE_UNLOAD | mk_id_flags(mk_id))


def open_console(mk_id: int, path: str = MKTTY) -> int:
    """Open the multikernel console and select the instance (before starting it)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise LoaderError("open-mktty", e.errno or 0) from None
    os.write(fd, f"{mk_id}\n".encode())
    return fd


def start(mk_id: int) -> None:
    syscalls.reboot(LINUX_REBOOT_CMD_MULTIKERNEL, mk_id)


def halt(mk_id: int, *, force: bool = False) -> None:
    cmd = LINUX_REBOOT_CMD_MULTIKERNEL_HALT_FORCE if force else LINUX_REBOOT_CMD_MULTIKERNEL_HALT
    syscalls.reboot(cmd, mk_id)


def delete(profile: Profile, tx: str) -> None:
    """Roll the instance's overlay back, which removes the instance."""
    try:
        os.rmdir(os.path.join(profile.root, "overlays", tx))
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


def run_instance(plan: Plan, report: Report) -> bool:
    """Create, load, start, watch, stop, unload and delete one instance.

    Returns True when the spawn printed ``plan.ready_marker`` on its console.
    Raises UnsupportedHost on a kernel without multikernel support, LoaderError when
    a step is refused.  Teardown runs for every step that was reached.
    """
    profile = plan.profile
    ensure_mounted(profile)
    report("mounted", profile.root)
    if plan.dtb is not None:
        report("baseline", "written" if write_baseline(profile, plan.dtb) else "already present")
    tx = None
    name = plan.name
    if plan.dtbo is not None and profile.overlays:
        tx = apply_overlay(profile, plan.dtbo)
        name = overlay_instance(profile, tx)
        report("overlay", f"{tx} instance={name}")
    if name is None:
        raise LoaderError("instance", errno.ENOENT, "no instance name (give one, or an overlay that creates it)")
    mk_id = plan.mk_id if plan.mk_id is not None else instance_id(profile, name)
    report("instance", f"name={name} id={mk_id} status={status(profile, name)}")
    try:
        return _load_and_run(plan, name, mk_id, report)
    finally:
        if tx is not None:
            delete(profile, tx)
            report("deleted", tx)


def _load_and_run(plan: Plan, name: str, mk_id: int, report: Report) -> bool:
    profile = plan.profile
    kernel_fd = os.open(plan.kernel, os.O_RDONLY | os.O_CLOEXEC)
    initrd_fd = os.open(plan.initrd, os.O_RDONLY | os.O_CLOEXEC) if plan.initrd else -1
    try:
        load(kernel_fd, initrd_fd, plan.cmdline, mk_id)
    finally:
        os.close(kernel_fd)
        if initrd_fd >= 0:
            os.close(initrd_fd)
    state = wait_status(profile, name, profile.loaded_state, 5.0)
    report("loaded", f"status={state}")
    try:
        console = open_console(mk_id)
        try:
            start(mk_id)
            report("started", f"status={wait_status(profile, name, 'active', 5.0)}")
            seen = read_console(console, lambda line: plan.ready_marker in line, plan.timeout_s,
                                lambda line: report("console", line))
        finally:
            os.close(console)
        if profile.can_halt:
            _stop(profile, name, mk_id, report)
        return seen
    finally:
        if status(profile, name) != "active":
            unload(mk_id)
            report("unloaded", f"status={status(profile, name)}")


def _stop(profile: Profile, name: str, mk_id: int, report: Report) -> None:
    halt(mk_id)
    state = wait_status(profile, name, profile.loaded_state, 5.0)
    if state == "active":
        halt(mk_id, force=True)
        state = wait_status(profile, name, profile.loaded_state, 5.0)
        report("halted", f"forced status={state}")
    else:
        report("halted", f"status={state}")
