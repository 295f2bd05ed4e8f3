"""Helpers for the initramfs tests: a short QEMU boot and GNU cpio round trips.

The QEMU check stage proper comes later; this is just enough to see the kernel unpack
an archive and run its init.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

QEMU_APPEND = "console=ttyS0 panic=-1 quiet"


def boot_serial(kernel: Path, initrd: Path, *, timeout_s: float = 180, memory: str = "512M") -> str:
    """Boot under TCG until the guest reboots (init's `reboot -f` with -no-reboot) and
    return the serial console text."""
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-nographic", "-m", memory, "-no-reboot",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", QEMU_APPEND]
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False)
        out = done.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout or b""
    return out.decode("utf-8", "replace")


def cpio_list(archive: Path) -> list[str]:
    """`cpio -itv` lines, numeric owners."""
    done = subprocess.run(["cpio", "-itvn", "--quiet", "-F", str(archive)], capture_output=True, check=True)
    return done.stdout.decode("utf-8", "backslashreplace").splitlines()


def cpio_extract(archive: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    with open(archive, "rb") as f:
        subprocess.run(["cpio", "-idm", "--no-absolute-filenames", "--quiet"], stdin=f, cwd=dest,
                       capture_output=True, check=True)


def snapshot(root: Path) -> dict[bytes, tuple[str, int, bytes]]:
    """Relative name → (type, permission bits, contents or symlink target) for a tree."""
    out: dict[bytes, tuple[str, int, bytes]] = {}
    base = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(base):
        for name in [*dirnames, *filenames]:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("l", 0, os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("d", stat.S_IMODE(st.st_mode), b"")
            else:
                with open(full, "rb") as f:
                    out[rel] = ("f", stat.S_IMODE(st.st_mode), f.read())
    return out


def cpio_table(archive: Path) -> dict[str, tuple[str, str, str, str | None]]:
    """`cpio -itvn` as name → (mode string, "uid/gid", size or "major,minor", symlink target)."""
    table: dict[str, tuple[str, str, str, str | None]] = {}
    for line in cpio_list(archive):
        tokens = line.split()
        is_dev = tokens[0][0] in "cb"
        size = tokens[4] + tokens[5] if is_dev else tokens[4]
        rest = tokens[6:] if is_dev else tokens[5:]  # month day year-or-time name [-> target]
        target = rest[5] if len(rest) > 5 and rest[4] == "->" else None
        table[rest[3]] = (tokens[0], f"{tokens[2]}/{tokens[3]}", size, target)
    return table
