"""The shared-library closure of host ELF executables, found as ld.so would find it.

Search order per DT_NEEDED (ld.so(8)): DT_RPATH of the object and of the executable
(only when the object has no DT_RUNPATH), DT_RUNPATH of the object, the directories of
/etc/ld.so.conf (what ld.so.cache indexes; ``include`` globs followed), then the
default directories.  ``$ORIGIN``, ``$LIB`` and ``$PLATFORM`` are expanded; glibc-hwcaps
subdirectories are not searched.  Candidates of another ELF class or machine are
skipped, as ld.so skips them.

Every path is placed at its *lexical* host path (``/lib64/ld-linux-x86-64.so.2``
stays there even where ``/lib64`` is a symlink on the host), so the paths written into
binaries resolve in the guest.  Symlinks met on the final component are kept as
symlinks, chain and all; directory symlinks become real directories.  The guest has
no ld.so.cache, so a library found only through ld.so.conf also gets a symlink in the
first default directory.
"""

from __future__ import annotations

import glob
import os
import re
import stat
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Only pyelftools' error class here (cheap); its parser (about 30 ms to import) is loaded
# when a dynamic closure is read, not for the header checks every build makes.
from elftools.common.exceptions import ELFError

from mkimage.errors import InputError
from mkimage.recipe.targets import Arch

ELF_MAGIC = b"\x7fELF"
MAX_SYMLINKS = 40  # Linux's MAXSYMLINKS
LD_SO_CONF = Path("/etc/ld.so.conf")

# The e_machine a target's kernel executes (pyelftools' names, as readelf prints them).
ARCH_MACHINES: dict[Arch, str] = {Arch.X86_64: "EM_X86_64", Arch.ARM64: "EM_AARCH64"}
_MACHINE_NAMES = {"EM_X86_64": "x86-64", "EM_AARCH64": "AArch64", "EM_386": "i386", "EM_ARM": "32-bit Arm"}
# e_machine numbers (elf.h) of the names above.
_MACHINE_NUMBERS = {62: "EM_X86_64", 183: "EM_AARCH64", 3: "EM_386", 40: "EM_ARM"}

# e_machine → (Debian multiarch triplet, $PLATFORM)
_MACHINES = {
    62: ("x86_64-linux-gnu", "x86_64"),  # EM_X86_64
    183: ("aarch64-linux-gnu", "aarch64"),  # EM_AARCH64
    3: ("i386-linux-gnu", "i686"),  # EM_386
}


@dataclass(frozen=True, slots=True)
class Placed:
    """One path of a closure: a host file copied as is, or a symlink."""

    path: str  # absolute, lexical
    target: str | None = None  # symlink text; None for a regular file read from ``path``


@dataclass(frozen=True, slots=True)
class ElfInfo:
    elf_class: int  # 32 or 64
    machine: int
    interp: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]


@dataclass(slots=True)
class _Walk:
    key: str
    binary: Path
    placed: dict[str, Placed] = field(default_factory=dict)


def elf_identity(path: str) -> tuple[int, int] | None:
    """(class, e_machine) from the ELF header, or None if the file is not ELF."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != ELF_MAGIC or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return (32 if head[4] == 1 else 64), machine


def elf_machine(path: Path) -> str | None:
    """e_machine as pyelftools names it (``EM_X86_64``), or None if the file is not ELF."""
    identity = elf_identity(str(path))
    if identity is None:
        return None
    number = identity[1]
    return _MACHINE_NUMBERS.get(number) or _pyelftools_machine_name(number)


def _pyelftools_machine_name(number: int) -> str:
    """A machine outside our table, named for the refusal message (the number if unknown)."""
    from elftools.elf.enums import ENUM_E_MACHINE

    return next((name for name, value in ENUM_E_MACHINE.items() if value == number), str(number))


def check_machine(path: Path, arch: Arch, key: str) -> None:
    """Refuse an ELF the target's kernel cannot execute (non-ELF files, e.g. scripts, pass)."""
    machine = elf_machine(path)
    wanted = ARCH_MACHINES[arch]
    if machine is None or machine == wanted:
        return
    raise InputError(
        f"{key}: {path} is an ELF for {_MACHINE_NAMES.get(machine, machine)} (e_machine {machine}), but the recipe "
        f"targets {arch}, whose kernel runs only {wanted} programs",
        code="elf-machine-mismatch",
        hint="give an executable built for the target" + (
            "; for busybox set initramfs.busybox = false and initramfs.init to a static program"
            if key == "initramfs.busybox" else ""),
    )


# What reading a file that is not a sound ELF raises: pyelftools' own error, I/O, bad values.
ELF_READ_ERRORS = (ELFError, OSError, ValueError)


def read_elf(path: str) -> ElfInfo:
    """Interpreter and dynamic entries, read from the program headers (sections may be stripped)."""
    from elftools.elf.dynamic import DynamicSegment
    from elftools.elf.elffile import ELFFile
    from elftools.elf.segments import InterpSegment

    with open(path, "rb") as f:
        elf = ELFFile(f)
        interp: str | None = None
        needed: list[str] = []
        rpath: list[str] = []
        runpath: list[str] = []
        for seg in elf.iter_segments():
            if isinstance(seg, InterpSegment):
                interp = seg.get_interp_name()
            elif isinstance(seg, DynamicSegment):
                for tag in seg.iter_tags():
                    kind = tag.entry.d_tag
                    if kind == "DT_NEEDED":
                        needed.append(_tag_text(tag, "needed"))
                    elif kind == "DT_RPATH":
                        rpath += _tag_text(tag, "rpath").split(":")
                    elif kind == "DT_RUNPATH":
                        runpath += _tag_text(tag, "runpath").split(":")
        return ElfInfo(elf.elfclass, _machine_number(elf["e_machine"]), interp, tuple(needed),
                       tuple(rpath), tuple(runpath))


def _tag_text(tag: object, attribute: str) -> str:
    """pyelftools attaches the decoded string of a tag as an attribute named after its kind."""
    return str(getattr(tag, attribute))


def _machine_number(value: str | int) -> int:
    if isinstance(value, int):
        return value
    names = {"EM_X86_64": 62, "EM_AARCH64": 183, "EM_386": 3}
    return names.get(value, -1)


def read_ld_so_conf(path: Path = LD_SO_CONF, _depth: int = 0) -> list[str]:
    """Directories listed by an ld.so.conf, with ``include`` globs followed in sorted order."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    dirs: list[str] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("hwcap "):
            continue
        if line.startswith("include ") and _depth < 8:
            for pattern in line.split()[1:]:
                full = pattern if pattern.startswith("/") else str(path.parent / pattern)
                for conf in sorted(glob.glob(full)):
                    dirs += read_ld_so_conf(Path(conf), _depth + 1)
            continue
        dirs += [d.split("=", 1)[0] for d in re.split(r"[:,\s]+", line) if d]
    return list(dict.fromkeys(os.path.normpath(d) for d in dirs))


def default_dirs(elf_class: int, machine: int) -> list[str]:
    triplet = _MACHINES.get(machine, ("", ""))[0]
    multiarch = [f"/lib/{triplet}", f"/usr/lib/{triplet}"] if triplet else []
    lib64 = ["/lib64", "/usr/lib64"] if elf_class == 64 else []
    return [*multiarch, *lib64, "/lib", "/usr/lib"]


class LibraryResolver:
    """Resolves closures against the host, reading ld.so.conf once."""

    def __init__(self, conf_dirs: Sequence[str] | None = None) -> None:
        self.conf_dirs = list(read_ld_so_conf() if conf_dirs is None else conf_dirs)

    def closure(self, binary: Path, key: str) -> list[Placed]:
        """``binary`` and everything it loads, in discovery order.  ``key`` names the
        recipe entry in errors."""
        walk = _Walk(key, binary)
        exe_path = self._place(walk, os.path.normpath(os.path.abspath(binary)))
        exe = self._read(walk, exe_path)
        pending = deque([(exe_path, exe)])
        done = {exe_path}
        while pending:
            obj_path, obj = pending.popleft()
            wanted = ([obj.interp] if obj.interp else []) + [self._find(walk, n, obj_path, obj, exe_path, exe)
                                                              for n in obj.needed]
            for path in wanted:
                final = self._place(walk, path)
                if final not in done:
                    done.add(final)
                    pending.append((final, self._read(walk, final)))
        return list(walk.placed.values())

    def _read(self, walk: _Walk, path: str) -> ElfInfo:
        try:
            return read_elf(path)
        except ELF_READ_ERRORS as e:
            raise InputError(f"{walk.key}: {path} is not a readable ELF file ({e})", code="bad-elf") from e

    def _place(self, walk: _Walk, path: str) -> str:
        """Record ``path`` and every symlink on the way to a regular file; return that file."""
        for _ in range(MAX_SYMLINKS):
            try:
                st = os.lstat(path)
            except OSError as e:
                raise InputError(f"{walk.key}: {path}: {e.strerror} (needed by {walk.binary})",
                                 code="no-such-file") from e
            if stat.S_ISREG(st.st_mode):
                walk.placed.setdefault(path, Placed(path))
                return path
            if not stat.S_ISLNK(st.st_mode):
                raise InputError(f"{walk.key}: {path} is not a regular file", code="bad-elf")
            target = os.readlink(path)
            walk.placed.setdefault(path, Placed(path, target))
            path = os.path.normpath(os.path.join(os.path.dirname(path), target))
        raise InputError(f"{walk.key}: {path}: too many levels of symbolic links", code="bad-elf")

    def _find(self, walk: _Walk, name: str, obj_path: str, obj: ElfInfo, exe_path: str, exe: ElfInfo) -> str:
        if "/" in name:
            return os.path.normpath(os.path.abspath(name))
        search: list[str] = []
        if not obj.runpath:
            search += _expand(obj.rpath, obj_path, obj)
            if obj_path != exe_path:
                search += _expand(exe.rpath, exe_path, exe)
        search += _expand(obj.runpath, obj_path, obj)
        defaults = default_dirs(exe.elf_class, exe.machine)
        for directory in [*search, *self.conf_dirs, *defaults]:
            candidate = os.path.normpath(os.path.join(directory, name))
            if elf_identity(candidate) == (exe.elf_class, exe.machine):
                if directory in self.conf_dirs and directory not in defaults and directory not in search:
                    # No ld.so.cache in the guest: make the default search find it.
                    walk.placed.setdefault(f"{defaults[0]}/{name}", Placed(f"{defaults[0]}/{name}", candidate))
                return candidate
        raise InputError(f"{walk.key}: {obj_path} needs {name}, which is not in its RPATH/RUNPATH, "
                         "ld.so.conf or the default library directories", code="missing-library")


def _expand(entries: Sequence[str], obj_path: str, obj: ElfInfo) -> list[str]:
    origin = os.path.dirname(obj_path)
    platform = _MACHINES.get(obj.machine, ("", ""))[1]
    lib = "lib64" if obj.elf_class == 64 else "lib"
    out = []
    for entry in entries:
        if not entry:
            continue
        for token, value in (("ORIGIN", origin), ("LIB", lib), ("PLATFORM", platform)):
            entry = entry.replace(f"${{{token}}}", value).replace(f"${token}", value)
        out.append(os.path.normpath(entry))
    return out
