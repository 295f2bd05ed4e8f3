"""The hand-off a spawn reads at boot (docs/handover-binding.md), as device-tree nodes.

The kernel's one channel from user space to a spawn's boot tree is
``instance-create/chosen/multikernel,host-tree``: it keeps that subtree
(dts.c mk_dt_parse_chosen) and copies it into the spawn's ``/chosen``
(manifest.c mk_manifest_add_host_tree), where the spawn sees it under
/sys/firmware/devicetree/base.  Our content sits in its ``mkspawn`` node; the
host-tree's own ``cpus`` keeps the kernel's meaning (the CPUs the spawn registers so
they can be hot-added later, core.c mk_register_cpus_from_host_tree), because a tree
given at instance-create replaces the one the kernel would otherwise generate.

The bundle's ``handover.dtb`` is the same tree plus ``/images`` (the digests of the
bundle's members, which the overlay cannot carry since it is one of them); the
handover stage builds it with ``handover_tree`` below, so both are one vocabulary.
Every integer is big-endian, as in every tree the kernel reads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mkimage.devicetree.dts import Bytes, DtsNode, node, text, u32, u64

COMPATIBLE = "mkspawn,handover-v2"
HOST_TREE = "multikernel,host-tree"
SPAWN_NODE = "mkspawn"  # our subtree inside the host-tree


def handover_tree(*, name: str | None, mk_id: int, profile: str, cpus: Sequence[int] = (),
                  memory_bytes: int | None = None, numa_nodes: Sequence[int] = (), cmdline: str = "",
                  preserve: Sequence[tuple[str, int]] = (), digests: Mapping[str, str] | None = None,
                  node_name: str = "") -> DtsNode:
    """The hand-off tree; ``digests`` (role → sha256 hex) adds ``/images`` (bundle
    member only); ``name`` None leaves out ``/instance``.  ``node_name`` "" makes it a
    root, SPAWN_NODE the overlay's copy."""
    images = None
    if digests is not None:
        images = DtsNode("images", (), tuple(
            DtsNode(role, (("sha256", Bytes(bytes.fromhex(digests[role]))),)) for role in sorted(digests)))
    instance = None if name is None else node(
        "instance",
        ("instance-name", text(name)),
        ("id", u32(mk_id)),
        ("cpus", u64(*cpus)) if cpus else None,
        ("memory-bytes", u64(memory_bytes)) if memory_bytes is not None else None,
        ("numa-nodes", u32(*numa_nodes)) if numa_nodes else None,
    )
    requests = [node(request, ("blob-size", u64(size))) for request, size in preserve]
    return node(
        node_name,
        ("compatible", text(COMPATIBLE)),
        node("abi", ("profile", text(profile))),
        images,
        instance,
        node("cmdline", ("bootargs", text(cmdline))),
        node("preserved-memory", *requests) if requests else None,
    )


def host_tree(handover: DtsNode, registered_cpus: Sequence[int]) -> DtsNode:
    """``chosen { multikernel,host-tree { cpus; mkspawn {…}; }; }`` for instance-create."""
    return node("chosen", node(HOST_TREE, ("cpus", u64(*registered_cpus)) if registered_cpus else None, handover))

