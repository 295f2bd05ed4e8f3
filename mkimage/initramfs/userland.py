"""Turn the recipe's ``[initramfs]`` table into archive entries.

Owners are always 0:0 and mtimes come from the host (the writer clamps them to
SOURCE_DATE_EPOCH).  Paths the user names explicitly (files, trees, nodes, symlinks,
init) must not collide with each other; generated paths (busybox applet links,
/dev/console, library closures) give way to explicit ones, so a recipe can replace
any of them.  Hard links inside one tree stay hard links (data stored once), as GNU
cpio and gen_init_cpio keep them.

Problems are reported against the recipe key that caused them (``key_error``); the
stage's caller fills in the file and line.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mkimage.errors import FormatError, shown_path
from mkimage.initramfs.elf import LibraryResolver, check_machine, elf_identity
from mkimage.initramfs.newc import CpioEntry, EntryKind, Reader, archive_name, show_name
from mkimage.recipe.locations import key_error, parse_key
from mkimage.recipe.targets import Arch

# Packing a tree (bench/initramfs.py's child) needs no recipe model, child processes or
# shipped assets: those are imported where a recipe's userland is laid out.
if TYPE_CHECKING:
    from mkimage.recipe.model import InitramfsSpec

BUSYBOX = Path("/bin/busybox")  # Debian busybox-static: no libraries to chase
# The default init (a busybox script), shipped from the repo's initramfs/.
DEFAULT_INIT = "initramfs/init.sh"
COMMAND_PATH = "etc/mkspawn/command"
CONSOLE = CpioEntry.node(b"dev/console", EntryKind.CHAR, major=5, minor=1, mode=0o600)

_HASH_CHUNK = 1024 * 1024


@dataclass(frozen=True, slots=True)
class HostFile:
    """A host file packed by the writer.  With ``digests`` set, its sha256 is recorded
    there while it streams (at the cost of the in-kernel copy fast path).  ``path`` is a
    str: a tree's thousands of files would spend more on building Path objects than on
    packing their headers."""

    path: str
    size: int
    key: str = field(compare=False)
    digests: dict[str, str] | None = field(default=None, compare=False, repr=False)

    def open(self) -> Reader:
        try:
            raw = open(self.path, "rb", buffering=0)  # noqa: SIM115 - the writer closes it
        except OSError as e:
            raise key_error(self.key, f"{self.path}: {e.strerror}", code="unreadable") from e
        return raw if self.digests is None else _Digesting(raw, self.path, self.digests)


class _Digesting:
    """Hashes exactly the bytes the writer reads; deliberately has no fileno()."""

    def __init__(self, raw: Reader, name: str, digests: dict[str, str]) -> None:
        self._raw = raw
        self._name = name
        self._digests = digests
        self._hash = hashlib.sha256()

    def read(self, size: int, /) -> bytes:
        chunk = self._raw.read(size)
        self._hash.update(chunk)
        return chunk

    def close(self) -> None:
        self._raw.close()
        self._digests[self._name] = self._hash.hexdigest()


def host_file(path: Path, key: str, digests: dict[str, str] | None, *, name: bytes,
              mode: int | None = None) -> CpioEntry:
    """A FILE entry for a host file; ``stat`` failures name the recipe key."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise key_error(key, f"{shown_path(path)}: {e.strerror}", code="no-such-file") from e
    if not stat.S_ISREG(st.st_mode):
        raise key_error(key, f"{shown_path(path)} is not a regular file", code="not-a-file")
    bits = stat.S_IMODE(st.st_mode) if mode is None else mode
    return CpioEntry.file(name, HostFile(str(path), st.st_size, key, digests), mode=bits, mtime=int(st.st_mtime))


def tree_entries(src: Path, dst: str, key: str, digests: dict[str, str] | None) -> Iterator[CpioEntry]:
    """A host directory, recursively: modes from disk, symlinks kept, special files as nodes,
    and each further name of a multiply linked file as a hard link to the first one met."""
    try:
        top = os.stat(src)
    except OSError as e:
        raise key_error(key, f"{shown_path(src)}: {e.strerror}", code="no-such-file") from e
    if not stat.S_ISDIR(top.st_mode):
        raise key_error(key, f"{shown_path(src)} is not a directory", code="not-a-directory")
    root = os.fsencode(dst).strip(b"/")
    if root:
        yield CpioEntry.directory(root, mode=stat.S_IMODE(top.st_mode), mtime=int(top.st_mtime))
    first_name: dict[tuple[int, int], bytes] = {}  # (st_dev, st_ino) of a linked file → its first name
    stack = [(os.fsencode(src), root)]
    while stack:
        host_dir, prefix = stack.pop()
        try:
            children = sorted(os.scandir(host_dir), key=lambda d: d.name)
        except OSError as e:
            raise key_error(key, f"{os.fsdecode(host_dir)}: {e.strerror}", code="unreadable") from e
        for child in children:
            name = prefix + b"/" + child.name if prefix else child.name
            entry = _tree_entry(child, name, key, digests, first_name)
            yield entry
            if entry.kind is EntryKind.DIR:
                stack.append((child.path, name))


def _tree_entry(child: os.DirEntry[bytes], name: bytes, key: str, digests: dict[str, str] | None,
                first_name: dict[tuple[int, int], bytes]) -> CpioEntry:
    try:
        st = child.stat(follow_symlinks=False)
        target = os.readlink(child.path) if stat.S_ISLNK(st.st_mode) else b""
    except OSError as e:
        raise key_error(key, f"{os.fsdecode(child.path)}: {e.strerror}", code="unreadable") from e
    mode, mtime = stat.S_IMODE(st.st_mode), int(st.st_mtime)
    if stat.S_ISDIR(st.st_mode):
        return CpioEntry.directory(name, mode=mode, mtime=mtime)
    if stat.S_ISREG(st.st_mode):
        if st.st_nlink > 1:
            first = first_name.setdefault((st.st_dev, st.st_ino), name)
            if first != name:
                return CpioEntry.hardlink(name, first)
        source = HostFile(os.fsdecode(child.path), st.st_size, key, digests)
        return CpioEntry.file(name, source, mode=mode, mtime=mtime)
    if stat.S_ISLNK(st.st_mode):
        return CpioEntry.symlink(name, target, mtime=mtime)
    kind = EntryKind(stat.S_IFMT(st.st_mode))
    return CpioEntry.node(name, kind, major=os.major(st.st_rdev), minor=os.minor(st.st_rdev), mode=mode, mtime=mtime)


@dataclass(frozen=True, slots=True)
class _Slot:
    entry: CpioEntry
    origin: str
    generated: bool


class Layout:
    """The main archive's entries by name, with the precedence rules above.  An origin is
    the recipe key an entry comes from (or a description of a generated one)."""

    def __init__(self) -> None:
        self._slots: dict[bytes, _Slot] = {}

    def add(self, entry: CpioEntry, origin: str, *, generated: bool = False) -> None:
        try:
            name = archive_name(entry.name)
        except FormatError as e:
            raise key_error(origin, e.message, code=e.code) from e
        old = self._slots.get(name)
        if old is None or (old.generated and not generated):
            self._slots[name] = _Slot(entry, origin, generated)
        elif _same(old.entry, entry) or (generated and not old.generated):
            return
        else:
            raise key_error(origin, f"{show_name(name)} is also placed by {_shown_origin(old.origin)}",
                            code="path-conflict")

    def entries(self) -> list[CpioEntry]:
        """Every entry; refuses a name whose parent is placed as something other than a
        directory (the writer would refuse it too, but without the recipe key)."""
        for name, slot in self._slots.items():
            parent = name.rpartition(b"/")[0]
            while parent:
                above = self._slots.get(parent)
                if above is not None and above.entry.kind is not EntryKind.DIR:
                    raise key_error(slot.origin, f"{show_name(name)} would be inside {show_name(parent)}, which "
                                    f"{_shown_origin(above.origin)} places as a {_KIND_NAMES[above.entry.kind]}",
                                    code="path-conflict")
                parent = parent.rpartition(b"/")[0]
        return [slot.entry for slot in self._slots.values()]


_KIND_NAMES = {EntryKind.FILE: "file", EntryKind.HARDLINK: "file", EntryKind.SYMLINK: "symlink",
               EntryKind.CHAR: "char device", EntryKind.BLOCK: "block device", EntryKind.FIFO: "FIFO",
               EntryKind.SOCKET: "socket", EntryKind.DIR: "directory"}


def _shown_origin(origin: str) -> str:
    """``initramfs.files[0].dst`` as errors show keys: ``[initramfs] files[0].dst``."""
    if parse_key(origin) is None:
        return origin
    section, _, rest = origin.partition(".")
    return f"[{section}] {rest}"


def _same(a: CpioEntry, b: CpioEntry) -> bool:
    return (a.kind, a.mode, a.target, a.data, a.rdev_major, a.rdev_minor) == (
        b.kind, b.mode, b.target, b.data, b.rdev_major, b.rdev_minor)


def layout_userland(spec: InitramfsSpec, digests: dict[str, str] | None,
                    arch: Arch = Arch.X86_64) -> tuple[Layout, dict[str, str]]:
    """Every main-archive entry the spec asks for, and versions of host tools packed.

    Programs (busybox, init, binaries) must be ELF files for ``arch``: a host x86-64
    binary in an arm64 initramfs is refused, not packed.
    """
    layout = Layout()
    tools: dict[str, str] = {}
    layout.add(CONSOLE, "initramfs (/dev/console)", generated=True)
    if spec.busybox:
        check_machine(BUSYBOX, arch, "initramfs.busybox")
        tools["busybox"] = _add_busybox(layout, digests)
    if spec.init is not None:
        check_machine(spec.init, arch, "initramfs.init")
    for i, binary in enumerate(spec.binaries):
        check_machine(binary, arch, f"initramfs.binaries[{i}]")
    _add_init(layout, spec, digests)
    for i, item in enumerate(spec.files):
        key = f"initramfs.files[{i}]"
        layout.add(host_file(item.src, f"{key}.src", digests, name=os.fsencode(item.dst), mode=item.mode),
                   f"{key}.dst")
    for i, tree in enumerate(spec.trees):
        key = f"initramfs.trees[{i}]"
        for entry in tree_entries(tree.src, tree.dst, f"{key}.src", digests):
            layout.add(entry, key)
    _add_binaries(layout, spec, digests)
    from mkimage.recipe.model import NodeType

    node_kinds = {NodeType.CHAR: EntryKind.CHAR, NodeType.BLOCK: EntryKind.BLOCK,
                  NodeType.FIFO: EntryKind.FIFO, NodeType.SOCKET: EntryKind.SOCKET}
    for i, node in enumerate(spec.nodes):
        entry = CpioEntry.node(os.fsencode(node.path), node_kinds[node.type], major=node.major or 0,
                               minor=node.minor or 0, mode=node.mode)
        layout.add(entry, f"initramfs.nodes[{i}].path")
    for i, link in enumerate(spec.symlinks):
        layout.add(CpioEntry.symlink(os.fsencode(link.path), os.fsencode(link.target)),
                   f"initramfs.symlinks[{i}].path")
    return layout, tools


def _add_busybox(layout: Layout, digests: dict[str, str] | None) -> str:
    from mkimage.run import run

    key = "initramfs.busybox"
    layout.add(host_file(BUSYBOX, key, digests, name=b"bin/busybox", mode=0o755), key)
    listing = run([BUSYBOX, "--list-full"], stage="initramfs", timeout_s=30).stdout
    for line in sorted(set(listing.split())):
        if line != b"bin/busybox":
            layout.add(CpioEntry.symlink(line, b"/bin/busybox"), key, generated=True)
    banner = run([BUSYBOX, "--help"], stage="initramfs", timeout_s=30, check=False).stdout
    return banner.decode("utf-8", "replace").partition("\n")[0].removesuffix(" multi-call binary.")


def _add_init(layout: Layout, spec: InitramfsSpec, digests: dict[str, str] | None) -> None:
    if spec.init is None and not spec.busybox:
        raise key_error("initramfs.busybox", "false, but the default init is a busybox script; set "
                        "initramfs.init to your own program", code="no-init")
    from mkimage.assets import asset_path

    source, key = ((spec.init, "initramfs.init") if spec.init is not None
                   else (asset_path(DEFAULT_INIT), "initramfs (default init)"))
    layout.add(host_file(source, key, digests, name=b"init", mode=0o755), key)
    if spec.command:
        command = CpioEntry.file(COMMAND_PATH.encode(), spec.command.encode() + b"\n", mode=0o644)
        layout.add(command, "initramfs.command")


def _add_binaries(layout: Layout, spec: InitramfsSpec, digests: dict[str, str] | None) -> None:
    if not spec.binaries:
        return
    resolver = LibraryResolver()
    for i, binary in enumerate(spec.binaries):
        key = f"initramfs.binaries[{i}]"
        if elf_identity(str(binary)) is None:
            raise key_error(key, f"{shown_path(binary)} is not an ELF file (copy scripts with initramfs.files)",
                            code="bad-elf")
        for placed in resolver.closure(binary, key):
            name = os.fsencode(placed.path)
            if placed.target is not None:
                entry = CpioEntry.symlink(name, os.fsencode(placed.target))
            else:
                entry = host_file(Path(placed.path), key, digests, name=name)
            layout.add(entry, key, generated=placed.path != str(binary))
