"""The handover FDT (docs/handover-binding.md): a record in, one page of bytes out, and back.

It copies KHO's conventions (kexec-and-formats.md §6.2, §6.6; kernel
Documentation/core-api/kho/concepts.rst): only the FDT container is used, the root is
at most one page with an empty reservation map, the root ``compatible`` is the version
key, there are no ``#…-cells``/``reg``/``ranges``, integers are native-endian
(little-endian on x86-64 and arm64), and each concern is one sub-node.  The compatible
is our own: a KHO receiver ignores a tree whose compatible is not its ``kho-vN``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from mkimage.devicetree.fdt import (
    Fdt,
    FdtNode,
    decode_fdt,
    decode_strings,
    encode_fdt,
    string,
    u64_le,
)
from mkimage.errors import FormatError, MkspawnError
from mkimage.recipe.model import AbiProfile

COMPATIBLE = "mkspawn,handover-v1"
PAGE_BYTES = 4096  # KHO's root FDT is one page
SHA256_BYTES = 32
_HEX64 = re.compile(r"[0-9a-f]{64}")
_NODE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9,._+-]{0,30}")

# Node and property names: the binding document's vocabulary, spelt once.
ABI, IMAGES, INSTANCE, CMDLINE, PRESERVED = "abi", "images", "instance", "cmdline", "preserved-memory"
_LAYOUT: dict[str, frozenset[str]] = {
    ABI: frozenset({"profile"}),
    CMDLINE: frozenset({"bootargs"}),
    INSTANCE: frozenset({"instance-name", "id", "cpus", "memory-bytes", "memory-base", "numa-nodes"}),
}


class HandoverError(MkspawnError):
    code = "handover"


@dataclass(frozen=True, slots=True)
class HandoverInstance:
    name: str
    id: int
    cpus: tuple[int, ...] = ()  # physical APIC ids; empty when the host places them
    memory_bytes: int | None = None
    memory_base: int | None = None
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

def _instance_node(inst: HandoverInstance) -> FdtNode:
    props: list[tuple[str, bytes]] = [("instance-name", string(inst.name)), ("id", u64_le(inst.id))]
    if inst.cpus:
        props.append(("cpus", u64_le(*inst.cpus)))
    if inst.memory_bytes is not None:
        props.append(("memory-bytes", u64_le(inst.memory_bytes)))
    if inst.memory_base is not None:
        props.append(("memory-base", u64_le(inst.memory_base)))
    if inst.numa_nodes:
        props.append(("numa-nodes", u64_le(*inst.numa_nodes)))
    return FdtNode(INSTANCE, tuple(props))


def encode_handover(handover: Handover) -> bytes:
    """One page: the tree, then free space up to PAGE_BYTES."""
    children = [FdtNode(ABI, (("profile", string(handover.profile.value)),))]
    images = tuple(FdtNode(role, (("sha256", bytes.fromhex(handover.digests[role])),))
                   for role in sorted(handover.digests))
    children.append(FdtNode(IMAGES, (), images))
    if handover.instance is not None:
        children.append(_instance_node(handover.instance))
    children.append(FdtNode(CMDLINE, (("bootargs", string(handover.cmdline)),)))
    if handover.preserve:
        requests = tuple(FdtNode(name, (("blob-size", u64_le(size)),)) for name, size in handover.preserve)
        children.append(FdtNode(PRESERVED, (), requests))
    root = FdtNode("", (("compatible", string(COMPATIBLE)),), tuple(children))
    blob = encode_fdt(Fdt(root))
    if len(blob) > PAGE_BYTES:
        raise HandoverError(f"the handover FDT needs {len(blob)} bytes, more than one {PAGE_BYTES}-byte page "
                            "(shorten the cmdline or the preserved-memory list)", code="handover-too-large")
    return encode_fdt(Fdt(root), min_size=PAGE_BYTES)


# ---- reading ---------------------------------------------------------------------------------------

def _fail(path: str, message: str) -> FormatError:
    return FormatError(f"{path}: {message}", code="bad-handover")


def _u64s(node: FdtNode, prop: str, path: str) -> tuple[int, ...]:
    value = node.prop(prop)
    if value is None:
        return ()
    if len(value) % 8 or not value:
        raise _fail(f"{path}/{prop}", f"observed {len(value)} bytes, expected a non-empty multiple of 8 (u64s)")
    return tuple(int.from_bytes(value[i : i + 8], "little") for i in range(0, len(value), 8))


def _one_u64(node: FdtNode, prop: str, path: str, *, required: bool = False) -> int | None:
    values = _u64s(node, prop, path)
    if not values:
        if required:
            raise _fail(path, f"missing property {prop!r}")
        return None
    if len(values) != 1:
        raise _fail(f"{path}/{prop}", f"observed {len(values)} u64s, expected 1")
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
    _expect_props(node, _LAYOUT[INSTANCE], path)
    ident = _one_u64(node, "id", path, required=True)
    assert ident is not None
    return HandoverInstance(
        name=_text(node, "instance-name", path),
        id=ident,
        cpus=_u64s(node, "cpus", path),
        memory_bytes=_one_u64(node, "memory-bytes", path),
        memory_base=_one_u64(node, "memory-base", path),
        numa_nodes=_u64s(node, "numa-nodes", path),
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
        size = _one_u64(request, "blob-size", path, required=True)
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
    for required in (ABI, IMAGES, CMDLINE):
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
        digests=_read_images(nodes[IMAGES]),
        instance=_read_instance(nodes[INSTANCE]) if INSTANCE in nodes else None,
        preserve=_read_preserve(nodes[PRESERVED]) if PRESERVED in nodes else (),
    )
