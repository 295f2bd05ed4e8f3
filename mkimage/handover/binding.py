"""The handover FDT (docs/handover-binding.md): a record in, one page of bytes out, and back.

The tree's vocabulary is mkimage/devicetree/hosttree.py, shared with the copy the
instance overlay carries to the spawn in ``chosen/multikernel,host-tree/mkspawn``;
this bundle member is that copy's signed source plus ``/images``.  Integers are
big-endian like every tree the kernel reads (v1 of this binding used KHO's
native-endian u64s and never reached a spawn).  The container keeps KHO's shape: one
page, an empty reservation map, the root ``compatible`` as the version key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from mkimage.devicetree.fdt import Fdt, FdtNode, decode_fdt, decode_strings, encode_fdt
from mkimage.devicetree.hosttree import COMPATIBLE, handover_tree
from mkimage.errors import FormatError, MkspawnError
from mkimage.recipe.model import AbiProfile

PAGE_BYTES = 4096  # KHO's root FDT is one page
SHA256_BYTES = 32
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NODE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9,._+-]{0,30}")

# Node and property names: the binding document's vocabulary, spelt once.
ABI, IMAGES, INSTANCE, CMDLINE, PRESERVED = "abi", "images", "instance", "cmdline", "preserved-memory"
_LAYOUT: dict[str, frozenset[str]] = {
    ABI: frozenset({"profile"}),
    CMDLINE: frozenset({"bootargs"}),
    INSTANCE: frozenset({"instance-name", "id", "cpus", "memory-bytes", "numa-nodes"}),
}


class HandoverError(MkspawnError):
    code = "handover"


@dataclass(frozen=True, slots=True)
class HandoverInstance:
    name: str
    id: int
    cpus: tuple[int, ...] = ()  # physical APIC ids; empty when the host places them
    memory_bytes: int | None = None
    numa_nodes: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Handover:
    profile: AbiProfile
    cmdline: str = ""
    digests: Mapping[str, str] = field(default_factory=dict)  # bundle role → sha256 hex
    instance: HandoverInstance | None = None
    preserve: tuple[tuple[str, int], ...] = ()  # (request name, size in bytes)

    def __post_init__(self) -> None:
        for role, digest in self.digests.items():
            if not _NODE_NAME.fullmatch(role):
                raise ValueError(f"digest role {role!r} is not a node name")
            if not _HEX64.fullmatch(digest):
                raise ValueError(f"digest for {role}: observed {digest!r}, expected 64 lowercase hex digits")
        names = [name for name, _ in self.preserve]
        if len(set(names)) != len(names) or not all(_NODE_NAME.fullmatch(n) for n in names):
            raise ValueError(f"preserved-memory names must be distinct node names, got {names}")


# ---- writing -----------------------------------------------------------------------------------

def encode_handover(handover: Handover) -> bytes:
    """One page: the tree, then free space up to PAGE_BYTES."""
    inst = handover.instance
    tree = handover_tree(
        name=inst.name if inst else None, mk_id=inst.id if inst else 0, profile=handover.profile.value,
        cpus=inst.cpus if inst else (), memory_bytes=inst.memory_bytes if inst else None,
        numa_nodes=inst.numa_nodes if inst else (), cmdline=handover.cmdline, preserve=handover.preserve,
        digests=handover.digests).to_fdt()
    blob = encode_fdt(Fdt(tree))
    if len(blob) > PAGE_BYTES:
        raise HandoverError(f"the handover FDT needs {len(blob)} bytes, more than one {PAGE_BYTES}-byte page "
                            "(shorten the cmdline or the preserved-memory list)", code="handover-too-large")
    return encode_fdt(Fdt(tree), min_size=PAGE_BYTES)


# ---- reading ---------------------------------------------------------------------------------------

def _fail(path: str, message: str) -> FormatError:
    return FormatError(f"{path}: {message}", code="bad-handover")


def _ints(node: FdtNode, prop: str, path: str, width: int) -> tuple[int, ...]:
    value = node.prop(prop)
    if value is None:
        return ()
    if len(value) % width or not value:
        raise _fail(f"{path}/{prop}", f"observed {len(value)} bytes, expected a non-empty multiple of {width} "
                    f"(big-endian u{width * 8}s)")
    return tuple(int.from_bytes(value[i : i + width], "big") for i in range(0, len(value), width))


def _one(node: FdtNode, prop: str, path: str, width: int, *, required: bool = False) -> int | None:
    values = _ints(node, prop, path, width)
    if not values:
        if required:
            raise _fail(path, f"missing property {prop!r}")
        return None
    if len(values) != 1:
        raise _fail(f"{path}/{prop}", f"observed {len(values)} values, expected 1")
    return values[0]


def _text(node: FdtNode, prop: str, path: str) -> str:
    value = node.prop(prop)
    if value is None:
        raise _fail(path, f"missing property {prop!r}")
    try:
        items = decode_strings(value)
    except FormatError as e:
        raise _fail(f"{path}/{prop}", e.message) from e
    if len(items) != 1:
        raise _fail(f"{path}/{prop}", f"observed {len(items)} strings, expected 1")
    return items[0]


def _expect_props(node: FdtNode, allowed: frozenset[str], path: str) -> None:
    for key, _ in node.properties:
        if key not in allowed:
            raise _fail(path, f"unknown property {key!r}")


def _read_instance(node: FdtNode) -> HandoverInstance:
    path = f"/{INSTANCE}"
    ident = _one(node, "id", path, 4, required=True)
    assert ident is not None
    return HandoverInstance(
        name=_text(node, "instance-name", path),
        id=ident,
        cpus=_ints(node, "cpus", path, 8),
        memory_bytes=_one(node, "memory-bytes", path, 8),
        numa_nodes=_ints(node, "numa-nodes", path, 4),
    )


def _read_images(node: FdtNode) -> dict[str, str]:
    digests: dict[str, str] = {}
    for image in node.children:
        path = f"/{IMAGES}/{image.name}"
        _expect_props(image, frozenset({"sha256"}), path)
        value = image.prop("sha256")
        if value is None or len(value) != SHA256_BYTES:
            raise _fail(f"{path}/sha256", f"observed {0 if value is None else len(value)} bytes, expected 32")
        digests[image.name] = value.hex()
    return digests


def _read_preserve(node: FdtNode) -> tuple[tuple[str, int], ...]:
    out = []
    for request in node.children:
        path = f"/{PRESERVED}/{request.name}"
        _expect_props(request, frozenset({"blob-size"}), path)
        size = _one(request, "blob-size", path, 8, required=True)
        assert size is not None
        out.append((request.name, size))
    return tuple(out)


def decode_handover(data: bytes) -> Handover:
    """Strict: the compatible must be ours and every node and property known."""
    root = decode_fdt(data).root
    compatible = _text(root, "compatible", "/")
    if compatible != COMPATIBLE:
        raise _fail("/compatible", f"observed {compatible!r}, expected {COMPATIBLE!r}")
    _expect_props(root, frozenset({"compatible"}), "/")
    nodes = {child.name: child for child in root.children}
    for name, child in nodes.items():
        if name not in (ABI, IMAGES, INSTANCE, CMDLINE, PRESERVED):
            raise _fail(f"/{name}", "unknown node")
        if name in _LAYOUT:
            _expect_props(child, _LAYOUT[name], f"/{name}")
        if child.children and name not in (IMAGES, PRESERVED):
            raise _fail(f"/{name}/{child.children[0].name}", "unknown node")
    for required in (ABI, CMDLINE):
        if required not in nodes:
            raise _fail(f"/{required}", "missing node")
    profile_text = _text(nodes[ABI], "profile", f"/{ABI}")
    try:
        profile = AbiProfile(profile_text)
    except ValueError:
        raise _fail(f"/{ABI}/profile", f"observed {profile_text!r}, expected one of "
                    f"{', '.join(p.value for p in AbiProfile)}") from None
    return Handover(
        profile=profile,
        cmdline=_text(nodes[CMDLINE], "bootargs", f"/{CMDLINE}"),
        digests=_read_images(nodes[IMAGES]) if IMAGES in nodes else {},
        instance=_read_instance(nodes[INSTANCE]) if INSTANCE in nodes else None,
        preserve=_read_preserve(nodes[PRESERVED]) if PRESERVED in nodes else (),
    )
