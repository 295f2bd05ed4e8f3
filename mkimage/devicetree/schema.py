"""The device trees a multikernel host needs, per ABI profile (multikernel-abi.md §7).

* v2 (§7.1): one whole DTB, ``/instances/<name>`` with u32 CPU cells, written to
  ``/sys/fs/multikernel/device_tree``; its baseline has flat ``memory-base`` /
  ``memory-bytes``.
* mk2 and mk-master (§7.2, §7.4): a baseline with u64 CPU cells and ``memory@N`` chunks,
  then an overlay (DTBO) whose ``fragment@0`` targets ``/instances`` with an
  ``instance-create`` node; devices follow in ``fragment@1`` as ``device-add`` items on
  ``/instances/<name>``.  Both profiles read the same overlays.rst, so their trees are
  the same.

The recipe loader has already checked what the profiles cannot express (u32 overflow,
NUMA or devices on v2), so this module only builds trees.
"""

from __future__ import annotations

from dataclasses import dataclass

from mkimage.devicetree.dts import DtsNode, node, text, u32, u64
from mkimage.recipe.model import AbiProfile, DeviceItem, PoolMemoryItem, Recipe

ROOT_COMPATIBLE = "multikernel-v1"  # §7.1/§7.2: the host's tree compatible, all generations
OVERLAY_TARGET = "/instances"  # §7.4: one of the three target paths the kernel accepts
DEVICES_PATH = "/resources/devices"


@dataclass(frozen=True, slots=True)
class Instance:
    """The instance with its CPUs placed: what every generated tree is built from."""

    name: str
    id: int
    profile: AbiProfile
    cpus: tuple[int, ...]
    memory_bytes: int
    memory_base: int | None
    numa_nodes: tuple[int, ...]
    devices: tuple[tuple[str, DeviceItem], ...]
    pool_cpus: tuple[int, ...]
    pool_memory: tuple[PoolMemoryItem, ...]


def place_cpus(pool: list[int], count: int, threads: int) -> tuple[int, ...]:
    """``count`` APIC ids from ``pool``: whole cores first, lowest ids first, so SMT
    siblings stay together whenever the count allows."""
    cores: dict[int, list[int]] = {}
    for cpu in sorted(pool):
        cores.setdefault(cpu // threads, []).append(cpu)
    chosen: list[int] = []
    for members in cores.values():
        if len(members) == threads and len(chosen) + threads <= count:
            chosen.extend(members)
    for cpu in sorted(pool):
        if len(chosen) == count:
            break
        if cpu not in chosen:
            chosen.append(cpu)
    return tuple(sorted(chosen))


def resolve_instance(recipe: Recipe) -> Instance | None:
    """None when the recipe describes no instance resources (nothing to generate)."""
    inst, dt = recipe.instance, recipe.devicetree
    if inst.profile is AbiProfile.NONE or inst.memory_bytes is None:
        return None
    assert inst.name is not None and inst.id is not None  # the loader insists on both
    count = inst.cpu_count
    cpus = tuple(inst.cpus) if count is None else place_cpus(dt.pool_cpus, count, dt.smt_threads)
    pool_memory = tuple(dt.pool_memory) or (
        PoolMemoryItem(size_bytes=inst.memory_bytes, base=inst.memory_base,
                       numa_node=inst.numa_nodes[0] if inst.numa_nodes else None),
    )
    return Instance(
        name=inst.name,
        id=inst.id,
        profile=inst.profile,
        cpus=cpus,
        memory_bytes=inst.memory_bytes,
        memory_base=inst.memory_base,
        numa_nodes=tuple(inst.numa_nodes),
        devices=tuple(inst.devices.items()),
        pool_cpus=tuple(dt.pool_cpus) or cpus,
        pool_memory=pool_memory,
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


def _overlay(inst: Instance) -> DtsNode:
    resources = node(
        "resources",
        ("memory-bytes", u64(inst.memory_bytes)),
        ("memory-base", u64(inst.memory_base)) if inst.memory_base is not None else None,
        ("cpus", u64(*inst.cpus)),
        ("numa-nodes", u32(*inst.numa_nodes)) if inst.numa_nodes else None,
    )
    create = node("instance-create", ("instance-name", text(inst.name)), ("id", u32(inst.id)), resources)
    fragments = [node("fragment@0", ("target-path", text(OVERLAY_TARGET)), node("__overlay__", create))]
    if inst.devices:
        items = _device_add_items(inst.devices)
        fragments.append(node("fragment@1", ("target-path", text(f"{OVERLAY_TARGET}/{inst.name}")),
                              node("__overlay__", node("device-add", *items))))
    return node("", *fragments)


def _device_add_items(devices: tuple[tuple[str, DeviceItem], ...]) -> list[DtsNode]:
    """overlays.rst names PCI items ``pci@N { pci-id; alias; }``.  It defines no platform
    item, so platform devices use the baseline's own device node shape (§7.2)."""
    items: list[DtsNode] = []
    pci_index = 0
    for name, dev in devices:
        if dev.pci is not None:
            items.append(node(f"pci@{pci_index}", ("pci-id", text(bdf(dev))),
                              ("alias", text(dev.alias)) if dev.alias else None))
            pci_index += 1
        else:
            items.append(_platform_node(name, dev))
    return items


def _platform_node(name: str, dev: DeviceItem) -> DtsNode:
    return node(
        name,
        ("device-type", text("platform")),
        ("device-name", text(dev.platform)) if dev.platform else None,
        ("acpi-hid", text(dev.acpi_hid)) if dev.acpi_hid else None,
    )


# ---- pool baselines -------------------------------------------------------------------------

def baseline_tree(inst: Instance) -> DtsNode:
    if inst.profile is AbiProfile.V2:
        (chunk,) = inst.pool_memory  # the loader allows one flat range on v2
        resources = node(
            "resources",
            ("cpus", u32(*inst.pool_cpus)),
            ("memory-base", u64(chunk.base)) if chunk.base is not None else None,
            ("memory-bytes", u64(chunk.size_bytes)),
        )
        return node("", ("compatible", text(ROOT_COMPATIBLE)), resources)
    memory = [_memory_chunk(i, chunk) for i, chunk in enumerate(inst.pool_memory)]
    devices = [_baseline_device(name, dev) for name, dev in inst.devices]
    resources = node("resources", ("cpus", u64(*inst.pool_cpus)), *memory,
                     node("devices", *devices) if devices else None)
    aliases = [(dev.alias, text(f"{DEVICES_PATH}/{name}")) for name, dev in inst.devices if dev.alias]
    return node("", ("compatible", text(ROOT_COMPATIBLE)), resources,
                node("aliases", *aliases) if aliases else None)


def _memory_chunk(index: int, chunk: PoolMemoryItem) -> DtsNode:
    """``memory@N { size }``, or ``reg`` (address, size) when the base is fixed (§7.4)."""
    extent = ("reg", u64(chunk.base, chunk.size_bytes)) if chunk.base is not None else ("size", u64(chunk.size_bytes))
    numa = ("numa-node-id", u32(chunk.numa_node)) if chunk.numa_node is not None else None
    return node(f"memory@{index}", extent, numa)


def _baseline_device(name: str, dev: DeviceItem) -> DtsNode:
    if dev.pci is None:
        return _platform_node(name, dev)
    assert dev.vendor_id is not None and dev.device_id is not None
    return node(name, ("device-type", text("pci")), ("pci-id", text(bdf(dev))),
                ("vendor-id", u32(dev.vendor_id)), ("device-id", u32(dev.device_id)))
