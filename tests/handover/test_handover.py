"""The handover FDT: our writer and reader round-trip, dtc/fdtget read the same tree, and the
instance overlay carries the same tree (minus /images) to the spawn's host-tree."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from mkimage.devicetree.build import build_devicetree
from mkimage.devicetree.fdt import Fdt, FdtNode, cells, decode_fdt, encode_fdt, string
from mkimage.errors import FormatError
from mkimage.handover.binding import (
    COMPATIBLE,
    PAGE_BYTES,
    Handover,
    HandoverError,
    HandoverInstance,
    decode_handover,
    encode_handover,
)
from mkimage.handover.build import build_handover, handover_record, spawn_cmdline
from mkimage.recipe.model import AbiProfile
from tests.conftest import needs_tool
from tests.devicetree.dt_helpers import load, recipe_text, tool

KERNEL = "a1" * 32
INITRD = "0f" * 32
SAMPLE = Handover(
    profile=AbiProfile.MK2,
    cmdline="console=ttyS0 console=mktty0",
    digests={"initrd": INITRD, "kernel": KERNEL},
    instance=HandoverInstance("app0", 7, cpus=(2, 3, 1 << 40), memory_bytes=0x10000000, numa_nodes=(0, 1)),
    preserve=(("ring", 0x100000), ("log", 0x2000)),
)


def test_round_trip_and_one_page() -> None:
    blob = encode_handover(SAMPLE)
    assert len(blob) == PAGE_BYTES
    assert decode_handover(blob) == SAMPLE
    fdt = decode_fdt(blob)
    assert fdt.reservations == () and fdt.root.prop("compatible") == string(COMPATIBLE)
    assert [c.name for c in fdt.root.children] == ["abi", "images", "instance", "cmdline", "preserved-memory"]


def test_minimal_round_trip() -> None:
    bare = Handover(profile=AbiProfile.V2)
    assert decode_handover(encode_handover(bare)) == bare


def test_dtc_and_fdtget_agree_with_the_reader(tmp_path: Path) -> None:
    needs_tool("dtc", "fdtget")
    path = tmp_path / "handover.dtb"
    path.write_bytes(encode_handover(SAMPLE))
    dts = tool("dtc", "-I", "dtb", "-O", "dts", path)
    assert f'compatible = "{COMPATIBLE}";' in dts
    # big-endian like every kernel tree: dtc prints a u64 as its two cells, high first
    assert "memory-bytes = <0x00 0x10000000>;" in dts and "id = <0x07>;" in dts
    assert tool("fdtget", "-t", "s", path, "/", "compatible").strip() == COMPATIBLE
    assert tool("fdtget", "-t", "s", path, "/abi", "profile").strip() == "mk2"
    assert tool("fdtget", "-t", "s", path, "/cmdline", "bootargs").strip() == SAMPLE.cmdline
    assert tool("fdtget", "-t", "s", path, "/instance", "instance-name").strip() == "app0"
    cpus = bytes(int(b, 16) for b in tool("fdtget", "-t", "bx", path, "/instance", "cpus").split())
    assert struct.unpack(">3Q", cpus) == SAMPLE.instance.cpus  # type: ignore[union-attr]
    assert tool("fdtget", "-t", "u", path, "/instance", "numa-nodes").split() == ["0", "1"]
    digest = bytes(int(b, 16) for b in tool("fdtget", "-t", "bx", path, "/images/kernel", "sha256").split())
    assert digest.hex() == KERNEL
    assert tool("fdtget", "-l", path, "/images").split() == ["initrd", "kernel"]
    size = bytes(int(b, 16) for b in tool("fdtget", "-t", "bx", path, "/preserved-memory/ring", "blob-size").split())
    assert struct.unpack(">Q", size) == (0x100000,)
    # and a tree dtc rebuilds from its own decompilation reads back the same
    (tmp_path / "again.dts").write_text(dts)
    tool("dtc", "-I", "dts", "-O", "dtb", "-o", tmp_path / "again.dtb", tmp_path / "again.dts")
    assert decode_handover((tmp_path / "again.dtb").read_bytes()) == SAMPLE


def _blob(*children: FdtNode, compatible: str = COMPATIBLE) -> bytes:
    base = [FdtNode("abi", (("profile", string("mk2")),)), FdtNode("images"),
            FdtNode("cmdline", (("bootargs", string("")),))]
    return encode_fdt(Fdt(FdtNode("", (("compatible", string(compatible)),), (*base, *children))))


@pytest.mark.parametrize(("blob", "message"), [
    (_blob(compatible="kho-v1"), "/compatible: observed 'kho-v1', expected 'mkspawn,handover-v2'"),
    (_blob(FdtNode("extra")), "/extra: unknown node"),
    (_blob(FdtNode("instance", (("instance-name", string("a")), ("id", cells(1, bits=64))))),
     "/instance/id: observed 2 values, expected 1"),
    (_blob(FdtNode("instance", (("instance-name", string("a")), ("id", b"\x01")))),
     "/instance/id: observed 1 bytes, expected a non-empty multiple of 4 (big-endian u32s)"),
    (_blob(FdtNode("instance", (("instance-name", string("a")), ("id", cells(1)), ("colour", b"")))),
     "/instance: unknown property 'colour'"),
    (_blob(FdtNode("instance", (("id", cells(1)),))), "/instance: missing property 'instance-name'"),
    (_blob(FdtNode("instance", (("instance-name", string("a")), ("id", cells(1)), ("memory-base", cells(1)))),),
     "/instance: unknown property 'memory-base'"),
    (encode_fdt(Fdt(FdtNode("", (("compatible", string(COMPATIBLE)),)))), "/abi: missing node"),
])
def test_reader_is_strict(blob: bytes, message: str) -> None:
    with pytest.raises(FormatError) as e:
        decode_handover(blob)
    assert e.value.message == message


def test_more_than_a_page_is_refused() -> None:
    big = Handover(profile=AbiProfile.MK2, cmdline="x" * 2047,
                   preserve=tuple((f"r{i}", 4096) for i in range(60)))
    with pytest.raises(HandoverError, match="more than one 4096-byte page"):
        encode_handover(big)


def test_bad_digests_are_programming_errors() -> None:
    with pytest.raises(ValueError, match="expected 64 lowercase hex"):
        Handover(profile=AbiProfile.MK2, digests={"kernel": "ABC"})


def test_built_from_the_recipe(tmp_path: Path) -> None:
    extra = 'cmdline = "console=mktty0"\npreserve = [{ name = "ring", size_bytes = 0x100000 }]\n'
    body = recipe_text("mk2").replace("[instance.devices.nic0]", extra + "[instance.devices.nic0]")
    recipe = load(tmp_path, body)
    assert spawn_cmdline(recipe) == "console=ttyS0 console=mktty0"
    (f,) = build_handover(recipe, tmp_path / "work", {"kernel": KERNEL})
    assert (f.role.value, f.member, f.media_type) == ("handover", "handover.dtb", "application/x-dtb")
    got = decode_handover(f.path.read_bytes())
    assert got == handover_record(recipe, {"kernel": KERNEL})
    assert got.instance == HandoverInstance("app0", 1, (2,), 0x10000000, (0,))
    assert got.preserve == (("ring", 0x100000),) and got.digests == {"kernel": KERNEL}
    bare = load(tmp_path, "")
    assert build_handover(bare, tmp_path / "bare", {"kernel": KERNEL}) == []


def test_the_overlay_carries_the_signed_tree_to_the_spawn(tmp_path: Path) -> None:
    """instance-create/chosen/multikernel,host-tree/mkspawn (which the kernel copies into
    the spawn's /chosen, dts.c mk_dt_parse_chosen) is handover.dtb without /images."""
    needs_tool("dtc")
    extra = 'cmdline = "console=mktty0"\npreserve = [{ name = "ring", size_bytes = 0x100000 }]\n'
    recipe = load(tmp_path, recipe_text("mk-master").replace("[instance.devices.nic0]",
                                                             extra + "[instance.devices.nic0]"))
    (member,) = build_handover(recipe, tmp_path / "work", {"kernel": KERNEL})
    signed = decode_fdt(member.path.read_bytes()).root
    dtbo = next(f.path for f in build_devicetree(recipe, tmp_path / "work") if f.path.suffix == ".dtbo")
    host_tree = decode_fdt(dtbo.read_bytes()).root.find(
        "/fragment@0/__overlay__/instance-create/chosen/multikernel,host-tree")
    assert host_tree is not None and [c.name for c in host_tree.children] == ["mkspawn"]
    assert host_tree.prop("cpus") == cells(2, 3, bits=64)  # [devicetree] pool_cpus, the kernel's meaning
    copy = host_tree.children[0]
    assert copy.properties == signed.properties
    assert copy.children == tuple(c for c in signed.children if c.name != "images")
    assert tool("fdtget", "-t", "s", dtbo, "/fragment@0/__overlay__/instance-create/chosen/"
                "multikernel,host-tree/mkspawn/instance", "instance-name").strip() == "app0"


def _as_sysfs(node: FdtNode, where: Path) -> None:
    """A tree laid out as /sys/firmware/devicetree/base shows it: a directory per node, a
    file per property holding its raw bytes."""
    where.mkdir(parents=True)
    for key, value in node.properties:
        (where / key).write_bytes(value)
    for child in node.children:
        _as_sysfs(child, where / child.name)


def test_default_init_reads_the_hand_off_and_is_quiet_without_it(tmp_path: Path) -> None:
    needs_tool("dtc", "busybox")
    init = Path(__file__).resolve().parents[2] / "initramfs" / "init.sh"
    lines = init.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("ht="))
    snippet = "\n".join(lines[first:lines.index("fi", first) + 1])
    base = tmp_path / "sys/firmware/devicetree/base"
    script = tmp_path / "snippet.sh"
    script.write_text(snippet.replace("/sys/firmware/devicetree/base", str(base)) + '\necho "env=$MKSPAWN_ID"\n')
    quiet = tool("busybox", "sh", script)
    assert quiet == "env=\n"
    recipe = load(tmp_path, recipe_text("mk2").replace("id = 1", "id = 300"))
    dtbo = next(f.path for f in build_devicetree(recipe, tmp_path / "work") if f.path.suffix == ".dtbo")
    chosen = decode_fdt(dtbo.read_bytes()).root.find("/fragment@0/__overlay__/instance-create/chosen")
    assert chosen is not None
    _as_sysfs(chosen.children[0], base / "chosen" / "multikernel,host-tree")
    assert tool("busybox", "sh", script) == "MKSPAWN-HANDOVER instance=app0 id=300 profile=mk2\nenv=300\n"
