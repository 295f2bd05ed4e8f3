"""The multikernel kernel's own parsers as the oracle for our trees: one row per check in
kernel/multikernel/{kernfs,baseline,overlay,dts,core}.c (commits in
docs/multikernel-conformance.md), applied to the blobs dtc compiles from our generated
.dts, for every profile that writes the current trees.  v2's parser (the RFC v2 posting)
is not in the public source index, so v2 trees are checked against the reference
document only (test_golden.py)."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from mkimage.devicetree.build import build_devicetree
from mkimage.devicetree.fdt import FdtNode, decode_fdt, decode_strings, walk
from mkimage.recipe.model import AbiProfile
from tests.conftest import needs_tool
from tests.devicetree.dt_helpers import load, recipe_text

PAGE = 4096
MAX_NUMNODES = 1 << 10  # x86-64's largest NODES_SHIFT; the kernel compares against its own
PCI_ID = re.compile(r"[0-9a-fA-F]+:[0-9a-fA-F]+:[0-9a-fA-F]+\.[0-9a-fA-F]+")  # sscanf "%x:%x:%x.%x"
OPS = ("instance-create", "memory-remove", "memory-add", "cpu-remove", "cpu-add", "device-remove", "device-add",
       "instance-remove")  # overlay.c mk_overlay_op_names; any other node under __overlay__ is ignored
CREATE = "/fragment@0/__overlay__/instance-create"
EXTRA = """\
cmdline = "console=mktty0"
preserve = [{ name = "ring", size_bytes = 0x100000 }]
[instance.devices.uart]
acpi_hid = "PNP0501"
"""


def u64s(value: bytes | None) -> list[int]:
    assert value is not None and value and len(value) % 8 == 0, value
    return [int.from_bytes(value[i:i + 8], "big") for i in range(0, len(value), 8)]


def cstr(value: bytes | None) -> str:
    assert value is not None and value.endswith(b"\0"), value
    (text,) = decode_strings(value)
    return text


def need(tree: FdtNode, path: str) -> FdtNode:
    found = tree.find(path)
    assert found is not None, f"missing {path}"
    return found


def devices_ok(devices: FdtNode | None, *, baseline: bool) -> None:
    for dev in devices.children if devices else ():
        kind = cstr(dev.prop("device-type"))  # without it the device is skipped silently
        assert kind in ("pci", "platform"), kind  # other types: "Unknown device-type", skipped
        if kind == "pci":
            assert PCI_ID.fullmatch(cstr(dev.prop("pci-id")))
            assert len(dev.prop("vendor-id") or b"") == 4 and len(dev.prop("device-id") or b"") == 4
        elif baseline:
            assert dev.prop("acpi-hid") is None  # baseline.c reads device-name (else the node name) only
        else:
            assert dev.prop("acpi-hid") is not None or dev.prop("device-name") is not None


def aliases_resolve(tree: FdtNode) -> None:
    aliases = tree.find("/aliases")
    for name, value in aliases.properties if aliases else ():
        assert tree.find(cstr(value)) is not None, f"alias {name} names no node"


def baseline_memory(tree: FdtNode) -> None:
    resources = need(tree, "/resources")
    chunks = [c for c in resources.children if c.name.startswith("memory@")]
    assert 0 < len(chunks) <= MAX_NUMNODES
    for chunk in chunks:
        (size,) = u64s(chunk.prop("size"))
        assert size and size % PAGE == 0
        nid = chunk.prop("numa-node-id")
        assert nid is None or (len(nid) == 4 and int.from_bytes(nid, "big") < MAX_NUMNODES)
        assert chunk.prop("reg") is None  # never read: the pool picks the address


def overlay_fragments(tree: FdtNode) -> None:
    frags = [c for c in tree.children if c.name.startswith("fragment@")]
    assert frags and all(re.fullmatch(r"fragment@[0-9a-f]+", f.name) for f in frags)
    for frag in frags:
        target = cstr(frag.prop("target-path"))
        assert target in ("/resources", "/instances") or re.fullmatch(r"/instances/[^/]+", target)
        overlay = frag.child("__overlay__")
        assert overlay is not None and all(op.name in OPS for op in overlay.children)
        if overlay.child("instance-create") is not None:
            assert target == "/instances"  # mk_overlay_check_namespace_target


def create_identity(tree: FdtNode) -> None:
    create = need(tree, CREATE)
    name = cstr(create.prop("instance-name"))
    assert name and "/" not in name
    assert len(create.prop("id") or b"") == 4  # any other length means "allocate an id"


def create_resources(tree: FdtNode) -> None:
    res = need(tree, f"{CREATE}/resources")
    (memory,) = u64s(res.prop("memory-bytes"))
    assert memory and memory % PAGE == 0
    u64s(res.prop("cpus"))
    numa = res.prop("numa-nodes")
    assert numa is None or (len(numa) >= 4 and len(numa) % 4 == 0 and int.from_bytes(numa[:4], "big") < MAX_NUMNODES)
    assert res.prop("memory-base") is None  # not read: memory comes from the pool allocator


def create_chosen(tree: FdtNode) -> None:
    chosen = need(tree, f"{CREATE}/chosen")
    assert not chosen.properties and [c.name for c in chosen.children] == ["multikernel,host-tree"]
    u64s(chosen.children[0].prop("cpus"))  # core.c: of_property_read_u64_index over "cpus"
    assert chosen.children[0].child("vmcore") is None  # dts.c: a vmcore node asks to dump the host


def create_pci_aliases(tree: FdtNode) -> None:
    devices = need(tree, f"{CREATE}/resources/devices")
    aliases = need(tree, "/aliases")
    targets = {cstr(v): k for k, v in aliases.properties}
    nic = f"{CREATE}/resources/devices/nic0"
    assert devices.child("nic0") is not None and targets.get(nic) == "eth0"


def no_instances(tree: FdtNode) -> None:
    instances = tree.find("/instances")
    assert instances is None or not instances.children


# (kernel source function, blob, check)
Row = tuple[str, str, Callable[[FdtNode], None]]
ROWS: list[Row] = [
    ("kernfs.c root_device_tree_write: no /instances children", "dtb", no_instances),
    ("baseline.c mk_baseline_validate_and_initialize: /resources", "dtb", lambda t: need(t, "/resources") and None),
    ("baseline.c mk_baseline_parse_cpus: cpus are u64s, at least one", "dtb",
     lambda t: u64s(need(t, "/resources").prop("cpus")) and None),
    ("baseline.c mk_baseline_parse_memory: memory@N { size; numa-node-id }", "dtb", baseline_memory),
    ("baseline.c mk_baseline_parse_memory: no flat memory-base/memory-bytes", "dtb",
     lambda t: need(t, "/resources").prop("memory-bytes") is None or pytest.fail("flat memory")),
    ("baseline.c mk_baseline_parse_devices", "dtb", lambda t: devices_ok(t.find("/resources/devices"), baseline=True)),
    ("dts.c mk_dt_node_alias: alias values are paths to nodes (baseline)", "dtb", aliases_resolve),
    ("overlay.c mk_overlay_collect_fragments/resolve_target/run_op", "dtbo", overlay_fragments),
    ("overlay.c mk_overlay_instance_name, mk_overlay_op_instance_create: id", "dtbo", create_identity),
    ("dts.c mk_dt_parse_memory/cpus/numa; memory-base unread", "dtbo", create_resources),
    ("dts.c mk_dt_parse_devices: no device-names", "dtbo",
     lambda t: need(t, f"{CREATE}/resources").prop("device-names") is None or pytest.fail("device-names")),
    ("dts.c mk_dt_parse_embedded_devices", "dtbo",
     lambda t: devices_ok(t.find(f"{CREATE}/resources/devices"), baseline=False)),
    ("dts.c mk_dt_add_pci_device + mk_dt_node_alias: PCI alias by node path", "dtbo", create_pci_aliases),
    ("dts.c mk_dt_node_alias: alias values are paths to nodes (overlay)", "dtbo", aliases_resolve),
    ("dts.c mk_dt_parse_chosen: only multikernel,host-tree", "dtbo", create_chosen),
]


@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], bytes]:
    needs_tool("dtc")
    out: dict[tuple[str, str], bytes] = {}
    for profile in (AbiProfile.MK2, AbiProfile.MK_MASTER):
        tmp = tmp_path_factory.mktemp(profile.value)
        body = recipe_text(profile.value).replace("[instance.devices.nic0]", EXTRA + "[instance.devices.nic0]")
        for f in build_devicetree(load(tmp, body), tmp / "work"):
            if f.role.value != "dts":
                out[(profile.value, f.path.suffix[1:])] = f.path.read_bytes()
    return out


@pytest.mark.parametrize("profile", ["mk2", "mk-master"])
@pytest.mark.parametrize(("check", "kind", "rule"), ROWS, ids=[r[0].split(":")[0] for r in ROWS])
def test_our_trees_pass_the_kernel_check(blobs: dict[tuple[str, str], bytes], profile: str, check: str, kind: str,
                                         rule: Callable[[FdtNode], None]) -> None:
    blob = blobs[(profile, kind)]
    fdt = decode_fdt(blob)
    assert fdt.total_size == len(blob)  # kernfs.c root_device_tree_write: totalsize == count
    if kind == "dtbo":  # overlay.c mk_overlay_new_write gets one kernfs page per write
        assert len(blob) <= PAGE
    rule(fdt.root)


def test_every_generated_node_is_named_as_libfdt_reads_it(blobs: dict[tuple[str, str], bytes]) -> None:
    for blob in blobs.values():
        for path, _node in walk(decode_fdt(blob).root):
            assert len(path.rsplit("/", 1)[-1]) <= 31, path


def test_the_oracle_catches_the_trees_we_used_to_write(tmp_path: Path) -> None:
    """Rows fire on the shapes the kernel refused or ignored before issue 10."""
    old_baseline = FdtNode("", (), (FdtNode("resources", (("cpus", (2).to_bytes(8, "big")),), (
        FdtNode("memory@0", (("reg", bytes(16)),)),)),))
    with pytest.raises(AssertionError):
        baseline_memory(old_baseline)
    old_create = FdtNode("", (), (FdtNode("fragment@0", (("target-path", b"/instances\0"),), (
        FdtNode("__overlay__", (), (FdtNode("instance-create", (), (FdtNode("resources", (
            ("memory-bytes", (PAGE).to_bytes(8, "big")), ("memory-base", bytes(8)),
            ("cpus", (2).to_bytes(8, "big")))),)),)),)),))
    with pytest.raises(AssertionError):
        create_resources(old_create)
    with pytest.raises(AssertionError):
        create_chosen(old_create)
