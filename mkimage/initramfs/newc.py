"""The newc cpio format (magic ``070701``) that the kernel unpacks as an initramfs.

Reference: Documentation/driver-api/early-userspace/buffer-format.rst and
init/initramfs.c.  A member is a 110-byte ASCII header (magic plus 13 fields of 8 hex
digits), the NUL-terminated name padded to 4 bytes, then the data padded to 4 bytes.

Choices this writer makes, all for reproducible archives:

* names are bytes and kept as given (non-UTF-8 is fine); one leading ``/`` run is
  dropped, as gen_init_cpio does; ``.``, ``..``, empty components and NUL are refused;
* entries are written in byte order of their names, which puts every parent before its
  children; missing parent directories are added once (0755, 0:0);
* inode numbers count up from 1 in archive order; a hardlink group shares the number
  of its first member, and only explicit ``HARDLINK`` entries form groups;
* nlink is 2 for directories (their name plus ``.``, as gen_init_cpio writes), the
  group size for hardlinked files and 1 for everything else;
* every mtime is clamped to the caller's SOURCE_DATE_EPOCH; entries without a source
  mtime get the epoch itself;
* the archive's own device numbers are 0:0 (the kernel matches hardlinks on them).

File data is streamed from each entry's ``DataSource``: nothing holds more than one
buffer of it, whatever the archive size.  Nothing here opens paths or reads the clock.
"""

from __future__ import annotations

import enum
import errno
import io
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from mkimage.errors import FormatError, InputError

NEWC_MAGIC = b"070701"
CRC_MAGIC = b"070702"  # same layout; `check` is the 32-bit sum of the data bytes
ODC_MAGIC = b"070707"  # old portable format, refused by the kernel
TRAILER_NAME = b"TRAILER!!!"
HEADER_SIZE = 110
ALIGN = 4
PATH_MAX = 4096  # include/uapi/linux/limits.h; namesize (with its NUL) must not exceed it
FIELD_MAX = 0xFFFFFFFF  # 8 hex digits

_HEADER = NEWC_MAGIC + b"%08X" * 13

# Large files go through copy_file_range/sendfile; small ones are cheaper to read into
# the output buffer than to pay a flush and a syscall each.
SMALL_FILE_BYTES = 256 * 1024
FLUSH_BYTES = 4 * 1024 * 1024
# Reads of file data into a compressor: large, so the compressor's workers get whole jobs
# and Python does little per byte; a read this size bypasses the buffer.
CHUNK_BYTES = FLUSH_BYTES
_MAX_COPY = 1 << 30


class EntryKind(enum.Enum):
    """What an entry is; the value is its ``S_IFMT`` type bits."""

    FILE = stat.S_IFREG
    DIR = stat.S_IFDIR
    SYMLINK = stat.S_IFLNK
    CHAR = stat.S_IFCHR
    BLOCK = stat.S_IFBLK
    FIFO = stat.S_IFIFO
    SOCKET = stat.S_IFSOCK
    HARDLINK = 0  # another name for a FILE entry; written with that file's header fields


class Reader(Protocol):
    """What the writer needs of opened file data; a real ``fileno()`` of a regular file
    enables the in-kernel copy."""

    def read(self, size: int, /) -> bytes: ...

    def close(self) -> None: ...


class Writable(Protocol):
    """Where an archive goes: a file, or a compressor writing into one."""

    def write(self, data: bytes | bytearray, /) -> object: ...

    def flush(self) -> None: ...


class DataSource(Protocol):
    """File contents that are opened only when their entry is written."""

    @property
    def size(self) -> int: ...

    def open(self) -> Reader: ...


@dataclass(frozen=True, slots=True)
class CpioEntry:
    """One member to write.  ``mode`` holds permission bits only; ``kind`` the type."""

    name: bytes
    kind: EntryKind
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: int | None = None
    data: bytes | DataSource = b""
    target: bytes = b""  # SYMLINK: the link text; HARDLINK: the name of the FILE entry
    rdev_major: int = 0
    rdev_minor: int = 0

    @property
    def size(self) -> int:
        if self.kind is EntryKind.FILE:
            return len(self.data) if isinstance(self.data, bytes) else self.data.size
        return len(self.target) if self.kind is EntryKind.SYMLINK else 0

    @classmethod
    def file(cls, name: bytes, data: bytes | DataSource, *, mode: int = 0o644, mtime: int | None = None,
             uid: int = 0, gid: int = 0) -> CpioEntry:
        return cls(name, EntryKind.FILE, mode, uid, gid, mtime, data=data)

    @classmethod
    def directory(cls, name: bytes, *, mode: int = 0o755, mtime: int | None = None) -> CpioEntry:
        return cls(name, EntryKind.DIR, mode, mtime=mtime)

    @classmethod
    def symlink(cls, name: bytes, target: bytes, *, mtime: int | None = None) -> CpioEntry:
        return cls(name, EntryKind.SYMLINK, 0o777, mtime=mtime, target=target)

    @classmethod
    def node(cls, name: bytes, kind: EntryKind, *, major: int = 0, minor: int = 0, mode: int = 0o600,
             mtime: int | None = None) -> CpioEntry:
        if kind not in (EntryKind.CHAR, EntryKind.BLOCK, EntryKind.FIFO, EntryKind.SOCKET):
            raise ValueError(f"not a node kind: {kind}")
        return cls(name, kind, mode, mtime=mtime, rdev_major=major, rdev_minor=minor)

    @classmethod
    def hardlink(cls, name: bytes, to: bytes) -> CpioEntry:
        return cls(name, EntryKind.HARDLINK, target=to)


def show_name(name: bytes) -> str:
    """A name for messages: UTF-8 where it is, escapes elsewhere."""
    return name.decode("utf-8", "backslashreplace")


def archive_name(name: bytes | str) -> bytes:
    """The stored form of an entry name, or FormatError if it could escape the root."""
    raw = os.fsencode(name)
    stripped = raw.lstrip(b"/")
    if not stripped:
        raise FormatError(f"empty entry name {show_name(raw)!r}", code="bad-name")
    if b"\0" in stripped:
        raise FormatError(f"NUL byte in entry name {show_name(raw)!r}", code="bad-name")
    if any(part in (b"", b".", b"..") for part in stripped.split(b"/")):
        raise FormatError(f"entry name {show_name(raw)!r} has a '.', '..' or empty component", code="bad-name")
    if len(stripped) + 1 > PATH_MAX:
        raise FormatError(f"entry name longer than {PATH_MAX - 1} bytes: {show_name(stripped[:64])}...",
                          code="bad-name")
    return stripped


def _check_entry(entry: CpioEntry, name: bytes) -> None:
    def fail(what: str) -> FormatError:
        return FormatError(f"{show_name(name)}: {what}", code="bad-entry")

    if not 0 <= entry.mode <= 0o7777:
        raise fail(f"mode {entry.mode:#o} is not permission bits")
    for label, value in (("uid", entry.uid), ("gid", entry.gid), ("major", entry.rdev_major),
                         ("minor", entry.rdev_minor), ("size", entry.size)):
        if not 0 <= value <= FIELD_MAX:
            raise fail(f"{label} {value} does not fit the newc header")
    if entry.kind is EntryKind.SYMLINK and (not entry.target or b"\0" in entry.target):
        raise fail("a symlink target must be non-empty and free of NUL")


@dataclass(frozen=True, slots=True)
class _Member:
    """A member resolved for writing: final header fields and where its data comes from."""

    name: bytes
    ino: int
    mode: int  # type and permission bits
    uid: int
    gid: int
    nlink: int
    mtime: int
    rdev_major: int
    rdev_minor: int
    payload: bytes | DataSource  # b"" for members without data


def _index(entries: Iterable[CpioEntry]) -> dict[bytes, CpioEntry]:
    by_name: dict[bytes, CpioEntry] = {}
    for entry in entries:
        name = archive_name(entry.name)
        _check_entry(entry, name)
        if name in by_name:
            raise FormatError(f"duplicate entry {show_name(name)}", code="duplicate-entry")
        by_name[name] = entry
    for name in list(by_name):
        parent = name.rpartition(b"/")[0]
        while parent and parent not in by_name:
            by_name[parent] = CpioEntry.directory(parent)
            parent = parent.rpartition(b"/")[0]
    for name in by_name:
        parent = name.rpartition(b"/")[0]
        if parent and by_name[parent].kind is not EntryKind.DIR:
            raise FormatError(f"{show_name(name)}: parent {show_name(parent)} is not a directory",
                              code="bad-entry")
    return by_name


def _link_groups(by_name: dict[bytes, CpioEntry]) -> dict[bytes, list[bytes]]:
    """FILE name → every name of that file (itself included), in archive order."""
    groups: dict[bytes, list[bytes]] = {}
    for name, entry in by_name.items():
        if entry.kind is not EntryKind.HARDLINK:
            continue
        to = archive_name(entry.target)
        if to not in by_name or by_name[to].kind is not EntryKind.FILE:
            raise FormatError(f"{show_name(name)}: hardlink to {show_name(to)}, which is not a regular file entry",
                              code="bad-entry")
        groups.setdefault(to, [to]).append(name)
    return {to: sorted(names) for to, names in groups.items()}


def _plan(entries: Iterable[CpioEntry], source_date_epoch: int) -> list[_Member]:
    """Validate, complete and order the entries; no data is read."""
    if not 0 <= source_date_epoch <= FIELD_MAX:
        raise FormatError(f"SOURCE_DATE_EPOCH {source_date_epoch} does not fit the newc header", code="bad-entry")
    by_name = _index(entries)
    groups = _link_groups(by_name)
    group_of = {name: to for to, names in groups.items() for name in names}
    ino_of: dict[bytes, int] = {}  # a name, or the FILE name heading its hardlink group → inode
    members: list[_Member] = []
    for name in sorted(by_name):
        key = group_of.get(name, name)
        ino = ino_of.setdefault(key, len(ino_of) + 1)
        members.append(_member(name, by_name[key], ino, groups.get(key, []), source_date_epoch))
    return members


def _member(name: bytes, entry: CpioEntry, ino: int, group: list[bytes], epoch: int) -> _Member:
    mtime = epoch if entry.mtime is None else max(0, min(entry.mtime, epoch))
    payload: bytes | DataSource = b""
    if entry.kind is EntryKind.FILE and (not group or name == group[-1]):
        payload = entry.data  # by convention a hardlink group carries its data on the last name
    elif entry.kind is EntryKind.SYMLINK:
        payload = entry.target
    nlink = len(group) or (2 if entry.kind is EntryKind.DIR else 1)
    return _Member(name, ino, entry.kind.value | entry.mode, entry.uid, entry.gid, nlink, mtime,
                   entry.rdev_major, entry.rdev_minor, payload)


def encode_header(*, ino: int, mode: int, uid: int, gid: int, nlink: int, mtime: int, size: int,
                  rdev_major: int, rdev_minor: int, name: bytes) -> bytes:
    """Header, name, NUL and the padding that brings the name to a 4-byte boundary."""
    namesize = len(name) + 1
    head = _HEADER % (ino, mode, uid, gid, nlink, mtime, size, 0, 0, rdev_major, rdev_minor, namesize, 0)
    return head + name + b"\0" * (1 + (-(HEADER_SIZE + namesize)) % ALIGN)


def write_archive(entries: Iterable[CpioEntry], out: Writable, *, source_date_epoch: int,
                  on_member: Callable[[int], None] | None = None) -> int:
    """Write one complete newc archive (ending in TRAILER!!!) to ``out``; return its size.

    ``out`` may be any binary stream; when it is a regular file, file data is copied
    in the kernel (copy_file_range, else sendfile) without passing through Python.
    ``on_member`` sees the data size of each member once it is written (for progress).
    """
    members = _plan(entries, source_date_epoch)
    sink = _Sink(out)
    # A member's padding goes out with the next header, and in-line data with its own
    # header: one buffered write per member instead of three (thousands in a tree).
    pad = b""
    for m in members:
        size = len(m.payload) if isinstance(m.payload, bytes) else m.payload.size
        head = pad + encode_header(ino=m.ino, mode=m.mode, uid=m.uid, gid=m.gid, nlink=m.nlink, mtime=m.mtime,
                                   size=size, rdev_major=m.rdev_major, rdev_minor=m.rdev_minor, name=m.name)
        if isinstance(m.payload, bytes):
            sink.write(head + m.payload)
        else:
            sink.write(head)
            sink.copy(m.payload, m.name)
        pad = b"\0" * (-size % ALIGN)
        if on_member is not None:
            on_member(size)
    sink.write(pad + encode_header(ino=0, mode=0, uid=0, gid=0, nlink=1, mtime=0, size=0, rdev_major=0,
                                   rdev_minor=0, name=TRAILER_NAME))
    sink.flush()
    return sink.offset


# Only plain file objects: compressing wrappers (GzipFile, LZMAFile, zstd writers)
# forward fileno() to the file underneath, and raw writes there would skip compression.
_PLAIN_FILES = (io.FileIO, io.BufferedWriter, io.BufferedReader, io.BufferedRandom)


def _regular_fd(stream: object) -> int | None:
    if not isinstance(stream, _PLAIN_FILES):
        return None
    fd = stream.fileno()
    return fd if stat.S_ISREG(os.fstat(fd).st_mode) else None


class _Sink:
    """Buffers headers and small files; hands large files to the kernel when it can."""

    def __init__(self, out: Writable) -> None:
        self._out = out
        self._buf = bytearray()
        self.offset = 0
        self._fd = _regular_fd(out)
        if self._fd is not None:
            out.flush()  # raw fd writes below must land after anything already buffered
        self._copy_file_range = True

    def write(self, data: bytes) -> None:
        self.offset += len(data)
        if len(data) >= FLUSH_BYTES:  # a large chunk goes out as it is, not copied into the buffer
            self.flush()
            self._emit(data)
            return
        self._buf += data
        if len(self._buf) >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._emit(self._buf)
            self._buf.clear()

    def _emit(self, data: bytes | bytearray) -> None:
        if self._fd is None:
            self._out.write(data)
            return
        view = memoryview(data)
        written = os.write(self._fd, view)
        while written < len(view):  # short writes are rare on regular files
            written += os.write(self._fd, view[written:])

    def copy(self, source: DataSource, name: bytes) -> None:
        size = source.size
        try:
            src = source.open()
            try:
                src_fd = _regular_fd(src) if self._fd is not None and size > SMALL_FILE_BYTES else None
                done = self._copy_fds(src_fd, size) if src_fd is not None else self._copy_reads(src, size)
            finally:
                src.close()
        except OSError as e:
            raise InputError(f"packing {show_name(name)}: {e.strerror or e}", code="unreadable") from e
        if done != size:
            raise InputError(f"{show_name(name)}: source ended after {done} of {size} bytes "
                             "(changed while packing?)", code="input-changed")

    def _copy_reads(self, src: Reader, size: int) -> int:
        done = 0
        while done < size:
            chunk = src.read(min(CHUNK_BYTES, size - done))
            if not chunk:
                break
            self.write(chunk)
            done += len(chunk)
        return done

    def _copy_fds(self, src_fd: int, size: int) -> int:
        assert self._fd is not None
        self.flush()
        done = 0
        while done < size:
            count = min(_MAX_COPY, size - done)
            n = self._copy_once(src_fd, count)
            if n == 0:
                break
            done += n
        self.offset += done
        return done

    def _copy_once(self, src_fd: int, count: int) -> int:
        assert self._fd is not None
        if self._copy_file_range:
            try:
                return os.copy_file_range(src_fd, self._fd, count)
            except OSError as e:
                # Cross-filesystem on old kernels, or a filesystem without support.
                if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                self._copy_file_range = False
        return os.sendfile(self._fd, src_fd, None, count)
