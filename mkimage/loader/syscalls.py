"""The three system calls the loader needs, through ctypes and libc's syscall().

kexec_file_load has no glibc wrapper; reboot(2)'s libc wrapper takes no argument
pointer (needed for the multikernel commands), so both go through syscall() by number.
Numbers and magic values: kexec-and-formats.md §4, multikernel-abi.md §3.
"""

from __future__ import annotations

import ctypes
import os

from mkimage.loader.errnos import LoaderError

# syscall numbers per `uname -m`
SYS_KEXEC_FILE_LOAD = {"x86_64": 320, "aarch64": 294}
SYS_REBOOT = {"x86_64": 169, "aarch64": 142}

# include/uapi/linux/kexec.h
KEXEC_FILE_UNLOAD = 0x1
KEXEC_FILE_ON_CRASH = 0x2
KEXEC_FILE_NO_INITRAMFS = 0x4
KEXEC_FILE_DEBUG = 0x8

# include/uapi/linux/reboot.h
LINUX_REBOOT_MAGIC1 = 0xFEE1DEAD
LINUX_REBOOT_MAGIC2 = 672274793
LINUX_REBOOT_CMD_RESTART = 0x01234567
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC
LINUX_REBOOT_CMD_KEXEC = 0x45584543

# mount(2) flags
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.mount.restype = ctypes.c_int
_libc.sync.restype = None


def _number(table: dict[str, int], name: str) -> int:
    machine = os.uname().machine
    if machine not in table:
        raise LoaderError(name, 38, f"no syscall number known for {machine}")  # ENOSYS
    return table[machine]


def _fail(op: str, detail: str = "") -> LoaderError:
    return LoaderError(op, ctypes.get_errno(), detail)


def kexec_file_load(kernel_fd: int, initrd_fd: int, cmdline: bytes | None, flags: int) -> None:
    """kexec_file_load(2).  ``cmdline`` is sent NUL-terminated (cmdline_len counts the
    NUL, and the kernel rejects a last byte that is not one); None sends no cmdline."""
    if cmdline is None:
        length, pointer = 0, None
    else:
        raw = cmdline + b"\0"
        length, pointer = len(raw), ctypes.c_char_p(raw)
    rc = _libc.syscall(
        ctypes.c_long(_number(SYS_KEXEC_FILE_LOAD, "kexec_file_load")),
        ctypes.c_int(kernel_fd),
        ctypes.c_int(initrd_fd),
        ctypes.c_ulong(length),
        pointer,
        ctypes.c_ulong(flags),
    )
    if rc != 0:
        raise _fail("kexec_file_load", f"flags={flags:#x}")


def reboot(cmd: int, arg: int | None = None) -> None:
    """reboot(2) with an optional ``int`` argument passed by pointer (the multikernel
    commands take ``struct { int mk_id; }``).  Returns only if the kernel refused."""
    pointer = ctypes.byref(ctypes.c_int(arg)) if arg is not None else None
    rc = _libc.syscall(
        ctypes.c_long(_number(SYS_REBOOT, "reboot")),
        ctypes.c_uint(LINUX_REBOOT_MAGIC1),
        ctypes.c_uint(LINUX_REBOOT_MAGIC2),
        ctypes.c_uint(cmd),
        pointer,
    )
    if rc != 0:
        raise _fail("reboot", f"cmd={cmd:#x}")


def mount(source: str, target: str, fstype: str, flags: int = 0) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None) != 0:
        raise _fail("mount", f"-t {fstype} {target}")


def sync() -> None:
    _libc.sync()
