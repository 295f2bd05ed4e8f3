"""The device trees a multikernel host needs, per ABI profile (multikernel-abi.md §7).

* v2 (§7.1): one whole DTB, ``/instances/<name>`` with u32 CPU cells, written to
  ``/sys/fs/multikernel/device_tree``; its baseline has flat ``memory-base`` /
  ``memory-bytes``.
* mk2 and mk-master (§7.2, §7.4, §14): a baseline with u64 CPU cells and
  ``memory@N { size; numa-node-id; }`` chunks (the pool picks the addresses), then an
  overlay (DTBO) whose ``fragment@0`` targets ``/instances`` with one ``instance-create``
  node: ``resources { memory-bytes; cpus; numa-nodes; devices/<name> {…}; }`` (dts.c
  mk_dt_parse_resources; no memory-base, which it never reads) and ``chosen {
  multikernel,host-tree {…}; }``, the hand-off the spawn reads (hosttree.py).  PCI
  aliases go in the overlay's root ``/aliases``, where dts.c mk_dt_node_alias looks
  them up by the device node's path.  Both profiles read the same kernel source, so
  their trees are the same.

The recipe loader has already checked what the profiles cannot express (u32 overflow,
NUMA or devices on v2, fixed addresses on mk2 and later), so this module only builds
trees; the kernel's own checks on them are tests/devicetree/test_kernel_rules.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mkimage.devicetree.dts import DtsNode, node, text, u32, u64
from mkimage.devicetree.hosttree import SPAWN_NODE, handover_tree, host_tree
from mkimage.recipe.model import AbiProfile, DeviceItem, PoolMemoryItem, Recipe
from mkimage.recipe.placement import place_cpus

ROOT_COMPATIBLE = "multikernel-v1"  # §7.1/§7.2: the host's tree compatible, all generations
OVERLAY_TARGET = "/instances"  # §7.4: one of the three target paths the kernel accepts
OVERLAY_FRAGMENT = "fragment@0"
DEVICES_PATH = "/resources/devices"


@dataclass(frozen=True, slots=True)
class Instance:
    """The instance with its CPUs placed: what every generated tree is built from."""

    name: str
    id: int
    profile: AbiProfile
    cpus: tuple[int, ...]
    memory_bytes: int
    numa_nodes: tuple[int, ...]
    devices: tuple[tuple[str, DeviceItem], ...]
    pool_cpus: tuple[int, ...]
    pool_memory: tuple[PoolMemoryItem, ...]
    cmdline: str
    preserve: tuple[tuple[str, int], ...]


def resolve_instance(recipe: Recipe) -> Instance | None:
    """None when the recipe describes no instance resources (nothing to generate)."""
    inst, dt = recipe.instance, recipe.devicetree
    if inst.profile is AbiProfile.NONE or inst.memory_bytes is None:
        return None
    assert inst.name is not None and inst.id is not None  # the loader insists on both
    count = inst.cpu_count
    cpus = tuple(inst.cpus) if count is None else place_cpus(dt.pool_cpus, count, dt.smt_threads)
    pool_memory = tuple(dt.pool_memory) or (
        PoolMemoryItem(size_bytes=inst.memory_bytes, numa_node=inst.numa_nodes[0] if inst.numa_nodes else None),
    )
    return Instance(
        name=inst.name,
        id=inst.id,
        profile=inst.profile,
        cpus=cpus,
        memory_bytes=inst.memory_bytes,
        numa_nodes=tuple(inst.numa_nodes),
        devices=tuple(inst.devices.items()),
        pool_cpus=tuple(dt.pool_cpus) or cpus,
        pool_memory=pool_memory,
        cmdline=" ".join(part for part in (recipe.kernel.cmdline, inst.cmdline) if part),
        preserve=tuple((item.name, item.size_bytes) for item in inst.preserve),
    )


def bdf(device: DeviceItem) -> str:
    """The PCI address as the kernel prints it: lowercase, with the domain."""
    assert device.pci is not None
    address = device.pci.lower()
    return address if address.count(":") == 2 else "0000:" + address


# ---- instance trees -----------------------------------------------------------------------

def instance_tree(inst: Instance) -> DtsNode:
    """v2: the whole instance DTB; later profiles: the instance-create overlay."""
    if inst.profile is AbiProfile.V2:
        return _v2_instance(inst)
    return _overlay(inst)


def _v2_instance(inst: Instance) -> DtsNode:
    resources = node("resources", ("cpus", u32(*inst.cpus)), ("memory-bytes", u32(inst.memory_bytes)))
    return node("", ("compatible", text(ROOT_COMPATIBLE)),
                node("instances", node(inst.name, ("id", u32(inst.id)), resources)))


def spawn_handover(inst: Instance, digests: dict[str, str] | None = None, *, node_name: str = "") -> DtsNode:
    """The hand-off tree of ``inst`` (hosttree.py): the overlay's copy, or with
    ``digests`` the bundle's handover.dtb."""
    return handover_tree(name=inst.name, mk_id=inst.id, profile=inst.profile.value, cpus=inst.cpus,
                         memory_bytes=inst.memory_bytes, numa_nodes=inst.numa_nodes, cmdline=inst.cmdline,
                         preserve=inst.preserve, digests=digests, node_name=node_name)


def _overlay(inst: Instance) -> DtsNode:
    devices = [_instance_device(name, dev) for name, dev in inst.devices]
    resources = node(
        "resources",
        ("memory-bytes", u64(inst.memory_bytes)),
        ("cpus", u64(*inst.cpus)),
        ("numa-nodes", u32(*inst.numa_nodes)) if inst.numa_nodes else None,
        node("devices", *devices) if devices else None,
    )
    create = node("instance-create", ("instance-name", text(inst.name)), ("id", u32(inst.id)), resources,
                  host_tree(spawn_handover(inst, node_name=SPAWN_NODE), inst.pool_cpus))
    where = f"/{OVERLAY_FRAGMENT}/__overlay__/instance-create/resources/devices"
    aliases = [(dev.alias, text(f"{where}/{name}")) for name, dev in inst.devices if dev.alias and dev.pci]
    return node("", node(OVERLAY_FRAGMENT, ("target-path", text(OVERLAY_TARGET)), node("__overlay__", create)),
                node("aliases", *aliases) if aliases else None)


def _instance_device(name: str, dev: DeviceItem) -> DtsNode:
    """dts.c mk_dt_parse_embedded_devices: a device described in full, PCI by address and
    ids, platform by acpi-hid and/or device-name."""
    if dev.pci is not None:
        return _pci_node(name, dev)
    return node(
        name,
        ("device-type", text("platform")),
        ("device-name", text(dev.platform)) if dev.platform else None,
        ("acpi-hid", text(dev.acpi_hid)) if dev.acpi_hid else None,
    )


def _pci_node(name: str, dev: DeviceItem) -> DtsNode:
    assert dev.vendor_id is not None and dev.device_id is not None
    return node(name, ("device-type", text("pci")), ("pci-id", text(bdf(dev))),
                ("vendor-id", u32(dev.vendor_id)), ("device-id", u32(dev.device_id)))


# ---- pool baselines -------------------------------------------------------------------------

def baseline_tree(inst: Instance) -> DtsNode:
    return pool_tree(inst.profile, inst.pool_cpus, inst.pool_memory, inst.devices)


def pool_tree(profile: AbiProfile, pool_cpus: Sequence[int], pool_memory: Sequence[PoolMemoryItem],
              devices: Sequence[tuple[str, DeviceItem]]) -> DtsNode:
    """The baseline of a whole pool: one instance's (its own devices) or a system's
    (every device of the host's pool)."""
    if profile is AbiProfile.V2:
        (chunk,) = pool_memory  # the loader allows one flat range on v2
        resources = node(
            "resources",
            ("cpus", u32(*pool_cpus)),
            ("memory-base", u64(chunk.base)) if chunk.base is not None else None,
            ("memory-bytes", u64(chunk.size_bytes)),
        )
        return node("", ("compatible", text(ROOT_COMPATIBLE)), resources)
    memory = [_memory_chunk(i, chunk) for i, chunk in enumerate(pool_memory)]
    nodes = [_baseline_device(name, dev) for name, dev in devices]
    resources = node("resources", ("cpus", u64(*pool_cpus)), *memory,
                     node("devices", *nodes) if nodes else None)
    aliases = [(dev.alias, text(f"{DEVICES_PATH}/{name}")) for name, dev in devices if dev.alias]
    return node("", ("compatible", text(ROOT_COMPATIBLE)), resources,
                node("aliases", *aliases) if aliases else None)


def _memory_chunk(index: int, chunk: PoolMemoryItem) -> DtsNode:
    """``memory@N { size; numa-node-id; }``: baseline.c mk_baseline_parse_memory reads only
    these and lets the pool choose the address (the recipe refuses a fixed base)."""
    assert chunk.base is None, "recipe validation lets no fixed base through on mk2 and later"
    numa = ("numa-node-id", u32(chunk.numa_node)) if chunk.numa_node is not None else None
    return node(f"memory@{index}", ("size", u64(chunk.size_bytes)), numa)


def _baseline_device(name: str, dev: DeviceItem) -> DtsNode:
    """baseline.c mk_baseline_parse_devices: PCI as in an instance; a platform device is
    named by device-name (else its node name) and acpi-hid is not read, so not written."""
    if dev.pci is not None:
        return _pci_node(name, dev)
    return node(name, ("device-type", text("platform")),
                ("device-name", text(dev.platform)) if dev.platform else None)
