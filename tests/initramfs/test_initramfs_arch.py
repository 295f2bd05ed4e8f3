"""Programs packed into an initramfs must run on the target: host ELF files of another
machine are refused, naming the recipe key and both e_machine values."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkimage.errors import InputError
from mkimage.initramfs.build import build_initramfs
from mkimage.initramfs.elf import elf_machine
from mkimage.initramfs.reader import read_initramfs
from mkimage.initramfs.userland import BUSYBOX
from mkimage.recipe.model import Arch, InitramfsSpec
from tests.conftest import missing, needs_tool

HOST_PROGRAM = Path("/bin/true")  # dynamic, x86-64 on the build machines


def _host_machine(path: Path) -> str:
    machine = elf_machine(path)
    if machine != "EM_X86_64":
        missing(f"{path} is not an x86-64 ELF on this host (got {machine})")
    return machine


def test_arm64_initramfs_refuses_the_host_busybox(tmp_path: Path) -> None:
    needs_tool("busybox")
    _host_machine(BUSYBOX)
    out = tmp_path / "initrd"
    with pytest.raises(InputError) as e:
        build_initramfs(InitramfsSpec(busybox=True), out, source_date_epoch=0, arch=Arch.ARM64)
    assert e.value.code == "elf-machine-mismatch"
    assert e.value.message == ("initramfs.busybox: /bin/busybox is an ELF for x86-64 (e_machine EM_X86_64), but the "
                               "recipe targets arm64, whose kernel runs only EM_AARCH64 programs")
    assert e.value.hint is not None and "initramfs.busybox = false" in e.value.hint
    assert not out.exists()


@pytest.mark.parametrize("key", ["init", "binaries"])
def test_arm64_initramfs_refuses_host_init_and_binaries(tmp_path: Path, key: str) -> None:
    _host_machine(HOST_PROGRAM)
    spec = (InitramfsSpec(busybox=False, init=HOST_PROGRAM) if key == "init"
            else InitramfsSpec(busybox=False, init=tmp_path / "init.sh", binaries=[HOST_PROGRAM]))
    (tmp_path / "init.sh").write_text("#!/bin/sh\n")
    with pytest.raises(InputError, match=rf"^initramfs\.{key}(\[0\])?: {HOST_PROGRAM} is an ELF for x86-64 "):
        build_initramfs(spec, tmp_path / "initrd", source_date_epoch=0, arch=Arch.ARM64)


def test_scripts_pass_for_any_arch_and_the_host_arch_takes_host_binaries(tmp_path: Path) -> None:
    needs_tool("busybox")
    _host_machine(BUSYBOX)
    init = tmp_path / "init"
    init.write_text("#!/bin/sh\necho hi\n")
    arm = build_initramfs(InitramfsSpec(busybox=False, init=init), tmp_path / "arm", source_date_epoch=0,
                          arch=Arch.ARM64)
    names = {m.name for seg in read_initramfs(arm.path.read_bytes()) for m in seg.members}
    assert {b"init", b"dev/console"} <= names
    x86 = build_initramfs(InitramfsSpec(busybox=True), tmp_path / "x86", source_date_epoch=0, arch=Arch.X86_64)
    assert x86.tools["busybox"].startswith("BusyBox")


@pytest.mark.parametrize("machine", [62, 183, 3, 40, 21, 0x7777], ids=["x86-64", "aarch64", "i386", "arm", "ppc64",
                                                                       "unknown"])
def test_the_header_read_names_machines_as_pyelftools_does(tmp_path: Path, machine: int) -> None:
    """elf_machine reads e_machine from the header itself (no pyelftools parse on every
    build); its names must stay pyelftools', which the refusal messages print."""
    from elftools.elf.elffile import ELFFile

    head = bytearray(HOST_PROGRAM.read_bytes())
    head[18:20] = machine.to_bytes(2, "little")
    path = tmp_path / "prog"
    path.write_bytes(head)
    with path.open("rb") as f:
        expected = str(ELFFile(f)["e_machine"])
    assert elf_machine(path) == expected


def test_non_elf_and_short_files_have_no_machine(tmp_path: Path) -> None:
    (tmp_path / "script").write_text("#!/bin/sh\n")
    (tmp_path / "short").write_bytes(b"\x7fELF\x02\x01")
    assert elf_machine(tmp_path / "script") is None
    assert elf_machine(tmp_path / "short") is None
    assert elf_machine(tmp_path / "absent") is None
