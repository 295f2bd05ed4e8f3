"""Plain kexec mode: stage a spawn kernel with kexec_file_load, check, jump.

The jump is reboot(LINUX_REBOOT_CMD_KEXEC): the running kernel is replaced, so on
success nothing after it runs.
"""

from __future__ import annotations

import os

from mkimage.loader import syscalls
from mkimage.loader.errnos import LoaderError

KEXEC_LOADED = "/sys/kernel/kexec_loaded"


def open_ro(path: str, what: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise LoaderError(f"open-{what}", e.errno or 0, path) from None


def load_file(kernel: str, initrd: str | None, cmdline: str, *, extra_flags: int = 0) -> None:
    """kexec_file_load the files; without an initrd KEXEC_FILE_NO_INITRAMFS is set."""
    kernel_fd = open_ro(kernel, "kernel")
    initrd_fd = -1
    try:
        flags = extra_flags
        if initrd is None:
            flags |= syscalls.KEXEC_FILE_NO_INITRAMFS
        else:
            initrd_fd = open_ro(initrd, "initrd")
        syscalls.kexec_file_load(kernel_fd, initrd_fd, cmdline.encode(), flags)
    finally:
        os.close(kernel_fd)
        if initrd_fd >= 0:
            os.close(initrd_fd)


def kexec_loaded() -> int | None:
    """/sys/kernel/kexec_loaded (1 when an image is staged); None without sysfs."""
    try:
        with open(KEXEC_LOADED, "rb") as f:
            return int(f.read().strip() or b"0")
    except (OSError, ValueError):
        return None


def unload() -> None:
    syscalls.kexec_file_load(-1, -1, None, syscalls.KEXEC_FILE_UNLOAD)


def execute() -> None:
    """Jump into the staged kernel; returns only by raising LoaderError."""
    syscalls.sync()
    syscalls.reboot(syscalls.LINUX_REBOOT_CMD_KEXEC)
