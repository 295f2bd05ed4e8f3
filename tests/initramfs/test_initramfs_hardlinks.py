"""Hard links inside a `trees` source stay hard links: data once, one inode, nlink right."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from mkimage.initramfs.build import build_initramfs
from mkimage.initramfs.reader import CpioMember, read_initramfs
from mkimage.recipe.model import Compression, InitramfsSpec, TreeItem
from tests.conftest import needs_tool
from tests.initramfs.initramfs_helpers import boot_serial, cpio_extract

EPOCH = 1_600_000_000
BLOB_BYTES = 256 * 1024  # large enough to take the writer's in-kernel copy path
GROUP = ("lib/dri/i965_dri.so", "lib/dri/iris_dri.so", "lib/dri/radeonsi_dri.so")


def make_tree(root: Path, outside: Path, blob: bytes, *, reverse: bool = False) -> None:
    """A 3-way link group, a file whose other link is outside the tree, and a plain file;
    ``reverse`` creates them in the opposite order (different inode numbers and dirents)."""
    (root / "lib" / "dri").mkdir(parents=True)
    (root / "bin").mkdir()
    first, *others = reversed(GROUP) if reverse else GROUP
    (root / first).write_bytes(blob)
    for name in others:
        os.link(root / first, root / name)
    (root / "bin" / "tool").write_bytes(b"tool\n")
    os.link(root / "bin" / "tool", outside / "tool-elsewhere")
    (root / "bin" / "plain").write_bytes(b"plain\n")


def build(root: Path, out: Path) -> bytes:
    spec = InitramfsSpec(busybox=False, init=root / "bin" / "plain", compression=Compression.NONE,
                         trees=[TreeItem(root, "/usr")])
    build_initramfs(spec, out, source_date_epoch=EPOCH)
    return out.read_bytes()


def members(archive: bytes) -> dict[bytes, CpioMember]:
    (segment,) = read_initramfs(archive)
    return {m.name: m for m in segment.members}


def test_a_link_group_is_packed_once_with_one_inode(tmp_path: Path) -> None:
    blob = os.urandom(BLOB_BYTES)
    (tmp_path / "outside").mkdir()
    make_tree(tmp_path / "tree", tmp_path / "outside", blob)
    archive = build(tmp_path / "tree", tmp_path / "initrd")
    assert len(archive) < 2 * BLOB_BYTES  # three names, the data once
    by_name = members(archive)
    group = [by_name[b"usr/" + name.encode()] for name in GROUP]
    assert len({m.ino for m in group}) == 1 and all(m.nlink == 3 for m in group)
    # GNU cpio's convention, which the kernel's unpacker follows too: data on the last name.
    assert [m.data for m in group] == [b"", b"", blob]
    others = [m for name, m in by_name.items() if name.startswith(b"usr/") and m not in group]
    assert group[0].ino not in {m.ino for m in others}
    # Its other link is not in the archive, so here it is an ordinary file.
    tool = by_name[b"usr/bin/tool"]
    assert (tool.nlink, tool.data) == (1, b"tool\n")


def test_gnu_cpio_extracts_the_link_intact(tmp_path: Path) -> None:
    needs_tool("cpio")
    blob = os.urandom(BLOB_BYTES)
    (tmp_path / "outside").mkdir()
    make_tree(tmp_path / "tree", tmp_path / "outside", blob)
    build(tmp_path / "tree", tmp_path / "initrd")
    cpio_extract(tmp_path / "initrd", tmp_path / "root")
    stats = [os.stat(tmp_path / "root" / "usr" / name) for name in GROUP]
    assert len({st.st_ino for st in stats}) == 1 and all(st.st_nlink == 3 for st in stats)
    assert all((tmp_path / "root" / "usr" / name).read_bytes() == blob for name in GROUP)
    assert os.stat(tmp_path / "root" / "usr" / "bin" / "tool").st_nlink == 1
    listing = subprocess.run(["cpio", "-t", "--quiet", "-F", str(tmp_path / "initrd")], capture_output=True,
                             check=True, text=True).stdout.split()
    assert [f"usr/{name}" for name in GROUP] == [n for n in listing if n.startswith("usr/lib/dri/")]


def test_link_groups_pack_byte_identically_whatever_the_host_inodes(tmp_path: Path) -> None:
    blob = os.urandom(BLOB_BYTES)
    archives = []
    for run, reverse in (("one", False), ("two", True)):
        (tmp_path / run / "outside").mkdir(parents=True)
        make_tree(tmp_path / run / "tree", tmp_path / run / "outside", blob, reverse=reverse)
        archives.append(build(tmp_path / run / "tree", tmp_path / run / "initrd"))
    assert archives[0] == archives[1]


@pytest.mark.slow
def test_the_kernel_unpacks_the_link_group_as_one_inode(tmp_path: Path, debian_kernel: Path) -> None:
    needs_tool("qemu-system-x86_64")
    needs_tool("busybox")
    blob = os.urandom(BLOB_BYTES)
    (tmp_path / "outside").mkdir()
    make_tree(tmp_path / "tree", tmp_path / "outside", blob)
    names = " ".join(f"/usr/{name}" for name in GROUP)
    command = (f"echo links=$(stat -c %h {names} | sort -u) inodes=$(stat -c %i {names} | sort -u | wc -l) "
               f"sums=$(md5sum {names} | cut -d' ' -f1 | sort -u)")
    spec = InitramfsSpec(compression=Compression.GZIP, command=command, trees=[TreeItem(tmp_path / "tree", "/usr")])
    initrd = build_initramfs(spec, tmp_path / "initrd.img", source_date_epoch=EPOCH).path
    serial = boot_serial(debian_kernel, initrd)
    assert f"links=3 inodes=1 sums={hashlib.md5(blob).hexdigest()}" in serial, serial[-2000:]
