"""The newc writer and reader, checked against GNU cpio and the reference compressors."""

from __future__ import annotations

import io
import os
import stat
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mkimage.errors import FormatError
from mkimage.initramfs.compress import compressing
from mkimage.initramfs.newc import CpioEntry, EntryKind, write_archive
from mkimage.initramfs.reader import read_initramfs
from mkimage.initramfs.userland import tree_entries
from mkimage.recipe.model import Compression
from tests.conftest import missing, needs_tool
from tests.initramfs.initramfs_helpers import cpio_extract, cpio_list, snapshot

EPOCH = 1_700_000_000
CONCRETE = [c for c in Compression if c is not Compression.AUTO]


def pack(entries: list[CpioEntry], path: Path, compression: Compression = Compression.NONE) -> Path:
    with open(path, "wb") as f, compressing(compression, f) as stream:
        write_archive(entries, stream, source_date_epoch=EPOCH)
    return path


def needs_root() -> None:
    if os.geteuid() != 0:
        missing("extracting device nodes and owners with GNU cpio needs root")


def sample_entries() -> list[CpioEntry]:
    return [
        CpioEntry.file(b"/etc/motd", b"hello\n", mode=0o644),
        CpioEntry.file(b"bin/tool", b"#!/bin/sh\necho hi\n", mode=0o755),
        CpioEntry.directory(b"var/empty", mode=0o700),
        CpioEntry.symlink(b"bin/sh", b"busybox"),
        CpioEntry.node(b"dev/console", EntryKind.CHAR, major=5, minor=1, mode=0o600),
        CpioEntry.node(b"dev/vda", EntryKind.BLOCK, major=254, minor=0, mode=0o660),
        CpioEntry.node(b"run/fifo", EntryKind.FIFO, mode=0o644),
        CpioEntry.node(b"run/sock", EntryKind.SOCKET, mode=0o755),
        CpioEntry.file(b"caf\xe9-latin1", b"not utf-8 name", mode=0o600),
    ]


def test_gnu_cpio_lists_exactly_the_entries(tmp_path: Path) -> None:
    needs_tool("cpio")
    lines = cpio_list(pack(sample_entries(), tmp_path / "a.cpio"))
    got = {line.split()[-1] if "->" not in line else line.split()[-3]: line.split() for line in lines}
    assert sorted(got) == sorted([
        "bin", "bin/sh", "bin/tool", "caf\\xe9-latin1", "dev", "dev/console", "dev/vda", "etc", "etc/motd",
        "run", "run/fifo", "run/sock", "var", "var/empty",
    ])
    expect_modes = {
        "bin": "drwxr-xr-x", "bin/sh": "lrwxrwxrwx", "bin/tool": "-rwxr-xr-x", "dev/console": "crw-------",
        "dev/vda": "brw-rw----", "etc/motd": "-rw-r--r--", "run/fifo": "prw-r--r--", "run/sock": "srwxr-xr-x",
        "var/empty": "drwx------", "caf\\xe9-latin1": "-rw-------",
    }
    for name, mode in expect_modes.items():
        assert got[name][0] == mode, name
        assert got[name][2:4] == ["0", "0"], f"{name}: owner must be 0:0"
    assert got["dev/console"][4:6] == ["5,", "1"]
    assert got["bin/sh"][-2:] == ["->", "busybox"]


def test_names_are_sorted_and_inodes_sequential(tmp_path: Path) -> None:
    segment, = read_initramfs(pack(sample_entries(), tmp_path / "a.cpio").read_bytes())
    names = [m.name for m in segment.members]
    assert names == sorted(names)
    assert [m.ino for m in segment.members] == list(range(1, len(names) + 1))
    assert all(m.mtime == EPOCH for m in segment.members)
    assert {m.nlink for m in segment.members if stat.S_ISDIR(m.mode)} == {2}
    assert {m.nlink for m in segment.members if not stat.S_ISDIR(m.mode)} == {1}


def make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "deeper" / "big.bin").write_bytes(os.urandom(3 * 1024 * 1024 + 5))  # in-kernel copy path
    (root / "sub" / "small.txt").write_text("small\n")
    (root / "empty").write_bytes(b"")
    (root / "script").write_text("#!/bin/sh\n")
    os.chmod(root / "script", 0o750)
    os.chmod(root / "sub" / "deeper", 0o711)
    os.symlink("sub/small.txt", root / "link")
    os.symlink("/nowhere/absolute", root / "sub" / "dangling")
    (root / os.fsdecode(b"n\xffm\xe9")).write_bytes(b"bytes name")


def test_gnu_cpio_extraction_reproduces_the_tree(tmp_path: Path) -> None:
    needs_tool("cpio")
    needs_root()
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src)
    archive = pack(list(tree_entries(src, "/", "test", None)), tmp_path / "t.cpio")
    cpio_extract(archive, tmp_path / "out")
    assert snapshot(tmp_path / "out") == snapshot(src)


def test_identical_content_stays_two_entries_with_their_modes(tmp_path: Path) -> None:
    needs_tool("cpio")
    needs_root()
    data = b"same bytes\n" * 100
    archive = pack([CpioEntry.file(b"a/exec", data, mode=0o755), CpioEntry.file(b"a/plain", data, mode=0o644)],
                   tmp_path / "t.cpio")
    cpio_extract(archive, tmp_path / "out")
    exec_st, plain_st = os.stat(tmp_path / "out/a/exec"), os.stat(tmp_path / "out/a/plain")
    assert (stat.S_IMODE(exec_st.st_mode), stat.S_IMODE(plain_st.st_mode)) == (0o755, 0o644)
    assert exec_st.st_ino != plain_st.st_ino and exec_st.st_nlink == plain_st.st_nlink == 1
    assert (tmp_path / "out/a/exec").read_bytes() == (tmp_path / "out/a/plain").read_bytes() == data


def test_explicit_hardlink_is_one_inode_after_extraction(tmp_path: Path) -> None:
    needs_tool("cpio")
    needs_root()
    archive = pack([CpioEntry.file(b"bin/b", b"payload", mode=0o700), CpioEntry.hardlink(b"bin/a", b"bin/b")],
                   tmp_path / "t.cpio")
    segment, = read_initramfs(archive.read_bytes())
    a, b = (m for m in segment.members if m.name in (b"bin/a", b"bin/b"))
    assert a.ino == b.ino and a.nlink == b.nlink == 2
    assert (a.data, b.data) == (b"", b"payload")  # data on the last name, as GNU cpio expects
    cpio_extract(archive, tmp_path / "out")
    sa, sb = os.stat(tmp_path / "out/bin/a"), os.stat(tmp_path / "out/bin/b")
    assert sa.st_ino == sb.st_ino and sa.st_nlink == 2 and stat.S_IMODE(sa.st_mode) == 0o700
    assert (tmp_path / "out/bin/a").read_bytes() == b"payload"


def test_mtimes_are_clamped_to_the_epoch() -> None:
    out = io.BytesIO()
    write_archive([CpioEntry.file(b"old", b"", mtime=1000), CpioEntry.file(b"new", b"", mtime=EPOCH + 99)], out,
                  source_date_epoch=EPOCH)
    segment, = read_initramfs(out.getvalue())
    assert {m.name: m.mtime for m in segment.members} == {b"old": 1000, b"new": EPOCH}


def test_leading_slash_is_stripped() -> None:
    out = io.BytesIO()
    write_archive([CpioEntry.file(b"//etc/x", b"1")], out, source_date_epoch=0)
    assert [m.name for m in read_initramfs(out.getvalue())[0].members] == [b"etc", b"etc/x"]


@pytest.mark.parametrize("entries, fragment", [
    ([CpioEntry.file(b"a/../../etc/passwd", b"")], "'..'"),
    ([CpioEntry.file(b"a//b", b"")], "empty component"),
    ([CpioEntry.file(b"./a", b"")], "'.'"),
    ([CpioEntry.file(b"a\0b", b"")], "NUL"),
    ([CpioEntry.file(b"/", b"")], "empty entry name"),
    ([CpioEntry.file(b"x", b"1"), CpioEntry.file(b"/x", b"2")], "duplicate entry x"),
    ([CpioEntry.file(b"f", b""), CpioEntry.file(b"f/g", b"")], "parent f is not a directory"),
    ([CpioEntry.hardlink(b"l", b"missing")], "not a regular file entry"),
    ([CpioEntry.file(b"m", b"", mode=0o10000)], "not permission bits"),
])
def test_bad_entries_are_format_errors(entries: list[CpioEntry], fragment: str) -> None:
    with pytest.raises(FormatError, match=fragment.replace("(", r"\(")):
        write_archive(entries, io.BytesIO(), source_date_epoch=0)


@pytest.mark.parametrize("compression", [c for c in CONCRETE if c is not Compression.NONE])
def test_reference_tools_decompress_our_streams(tmp_path: Path, compression: Compression) -> None:
    tool = {Compression.GZIP: "gzip", Compression.XZ: "xz", Compression.ZSTD: "zstd", Compression.LZ4: "lz4"}
    needs_tool(tool[compression])
    entries = [*sample_entries(), CpioEntry.file(b"big", os.urandom(9 * 1024 * 1024))]  # > one lz4 block
    plain = pack(entries, tmp_path / "plain.cpio")
    packed = pack(entries, tmp_path / "packed", compression)
    with open(packed, "rb") as f:
        done = subprocess.run([tool[compression], "-dc"], stdin=f, capture_output=True, check=True)
    assert done.stdout == plain.read_bytes()


def test_reader_decodes_concatenated_early_and_compressed_segments(tmp_path: Path) -> None:
    path = tmp_path / "all"
    with open(path, "wb") as f:
        write_archive([CpioEntry.file(b"kernel/x86/microcode/GenuineIntel.bin", b"ucode")], f, source_date_epoch=0)
        for compression in CONCRETE:
            with compressing(compression, f) as stream:
                write_archive([CpioEntry.file(f"{compression}.txt".encode(), b"x")], stream, source_date_epoch=0)
        f.write(b"\0" * 12)  # trailing padding, as boot loaders leave it
    segments = read_initramfs(path.read_bytes())
    assert [s.compression for s in segments] == [Compression.NONE, *CONCRETE]
    assert segments[0].members[-1].data == b"ucode"
    for segment, compression in zip(segments[1:], CONCRETE, strict=True):
        assert [m.name for m in segment.members] == [f"{compression}.txt".encode()]


def test_reader_accepts_gnu_cpio_newc_and_crc(tmp_path: Path) -> None:
    needs_tool("cpio")
    (tmp_path / "f").write_bytes(b"checked data\n")
    for fmt in ("newc", "crc"):
        done = subprocess.run(["cpio", "-o", "-H", fmt, "--quiet"], input=b"f\n", cwd=tmp_path,
                              capture_output=True, check=True)
        segment, = read_initramfs(done.stdout)
        assert [(m.name, m.data, m.crc) for m in segment.members] == [(b"f", b"checked data\n", fmt == "crc")]


def test_reader_rejects_a_bad_crc_sum() -> None:
    header = b"070702" + b"%08X" * 13 % (1, 0o100644, 0, 0, 1, 0, 4, 0, 0, 0, 0, 2, 12345)
    with pytest.raises(FormatError, match="checksum"):
        read_initramfs(header + b"f\0" + b"data")


@pytest.mark.parametrize("blob, fragment", [
    (b"070707" + b"0" * 200, "odc"),
    (b"garbage!", "no cpio magic"),
    (b"BZh91AY&SY", "bzip2"),
    (b"\x1f\x8b\x08\x00\x00", "gzip"),
    (b"070701" + b"0" * 104, "namesize"),
])
def test_reader_errors_name_what_and_where(blob: bytes, fragment: str) -> None:
    with pytest.raises(FormatError, match=fragment) as info:
        read_initramfs(blob)
    assert info.value.offset is not None


def _valid_archive() -> bytes:
    out = io.BytesIO()
    write_archive(sample_entries(), out, source_date_epoch=EPOCH)
    return out.getvalue()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_fuzz_arbitrary_bytes_only_format_errors(blob: bytes) -> None:
    try:
        read_initramfs(blob)
    except FormatError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0), st.binary(min_size=1, max_size=8), st.booleans())
def test_fuzz_mutated_archives_only_format_errors(where: int, patch: bytes, truncate: bool) -> None:
    valid = _valid_archive()
    at = where % len(valid)
    blob = valid[:at] if truncate else valid[:at] + patch + valid[at + len(patch):]
    try:
        read_initramfs(blob)
    except FormatError:
        pass
