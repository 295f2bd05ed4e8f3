"""The flattened device tree (FDT, "DTB") container: records in, bytes out, and back.

Layout per the Devicetree Specification v0.4 §5 (also dtc's Documentation/dt-object-
internal.txt): a 40-byte big-endian header, the memory reservation block (u64 address,
size pairs ending in a zero pair), the structure block (tokens), then the strings block.
We write version 17 (last compatible 16), the one every libfdt and kernel reads.

Property values are opaque bytes here; how a value is encoded (big-endian cells, the
native-endian u64s KHO uses, strings) is the caller's business, helped by the
``cells``/``u64_le``/``string`` encoders below.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mkimage.errors import FormatError

FDT_MAGIC = 0xD00DFEED
FDT_VERSION = 17
FDT_LAST_COMP_VERSION = 16
HEADER = struct.Struct(">10I")  # magic … size_dt_struct, all u32 big-endian
RSV_ENTRY = struct.Struct(">QQ")

FDT_BEGIN_NODE = 0x1
FDT_END_NODE = 0x2
FDT_PROP = 0x3
FDT_NOP = 0x4
FDT_END = 0x9

# Node names: 1..31 name characters, optionally "@unit-address" (DT spec §2.2.1).
_NAME_CHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ,._+-")
_UNIT_CHARS = _NAME_CHARS
_PROP_CHARS = _NAME_CHARS | frozenset(b"?#")


@dataclass(frozen=True, slots=True)
class FdtNode:
    """A node: its name (the root's is ""), properties in order, then children in order."""

    name: str
    properties: tuple[tuple[str, bytes], ...] = ()
    children: tuple[FdtNode, ...] = ()

    def prop(self, name: str) -> bytes | None:
        return next((value for key, value in self.properties if key == name), None)

    def child(self, name: str) -> FdtNode | None:
        return next((c for c in self.children if c.name == name), None)

    def find(self, path: str) -> FdtNode | None:
        """The node at an absolute path such as ``/resources/devices``."""
        node: FdtNode | None = self
        for part in filter(None, path.split("/")):
            node = node.child(part) if node is not None else None
        return node


@dataclass(frozen=True, slots=True)
class Fdt:
    root: FdtNode
    reservations: tuple[tuple[int, int], ...] = ()  # (address, size)
    boot_cpuid_phys: int = 0
    # totalsize may exceed what the content needs (free space at the end, as KHO's
    # one-page root wants); decoding keeps the recorded value.
    total_size: int | None = field(default=None, compare=False)


# ---- value encoders --------------------------------------------------------------------

def cells(*values: int, bits: int = 32) -> bytes:
    """Big-endian integers of ``bits`` (8/16/32/64), as dtc's ``/bits/ N <…>`` writes them."""
    fmt = {8: "B", 16: "H", 32: "I", 64: "Q"}[bits]
    return struct.pack(f">{len(values)}{fmt}", *values)


def u64_le(*values: int) -> bytes:
    """Native-endian (little on x86/arm64) u64s, the KHO convention (core-api/kho/concepts.rst)."""
    return struct.pack(f"<{len(values)}Q", *values)


def string(text: str) -> bytes:
    return text.encode() + b"\0"


def strings(texts: Iterable[str]) -> bytes:
    return b"".join(string(t) for t in texts)


def decode_strings(value: bytes) -> list[str]:
    """A stringlist property → its strings; FormatError if it is not NUL-terminated text."""
    if not value.endswith(b"\0"):
        raise FormatError("string property is not NUL-terminated", code="bad-fdt")
    try:
        return value[:-1].decode().split("\0")
    except UnicodeDecodeError as e:
        raise FormatError(f"string property is not UTF-8: {e}", code="bad-fdt") from e


# ---- encoding ---------------------------------------------------------------------------

def _pad4(data: bytes) -> bytes:
    return data + bytes(-len(data) % 4)


def _check_node_name(name: str, is_root: bool) -> None:
    if is_root:
        if name:
            raise ValueError(f"the root node has an empty name, got {name!r}")
        return
    base, _, unit = name.partition("@")
    raw_base, raw_unit = base.encode(), unit.encode()
    if not 1 <= len(raw_base) <= 31 or not set(raw_base) <= _NAME_CHARS:
        raise ValueError(f"bad node name {name!r}")
    if "@" in name and (not raw_unit or not set(raw_unit) <= _UNIT_CHARS):
        raise ValueError(f"bad unit address in node name {name!r}")


def _check_prop_name(name: str) -> None:
    raw = name.encode()
    if not 1 <= len(raw) <= 31 or not set(raw) <= _PROP_CHARS:
        raise ValueError(f"bad property name {name!r}")


class _Strings:
    """The strings block; each name is stored once, in order of first use (as dtc does)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.offsets: dict[str, int] = {}

    def offset(self, name: str) -> int:
        if name not in self.offsets:
            self.offsets[name] = len(self.data)
            self.data += string(name)
        return self.offsets[name]


def _emit(node: FdtNode, out: bytearray, names: _Strings, is_root: bool) -> None:
    _check_node_name(node.name, is_root)
    out += struct.pack(">I", FDT_BEGIN_NODE) + _pad4(string(node.name))
    seen: set[str] = set()
    for key, value in node.properties:
        _check_prop_name(key)
        if key in seen:
            raise ValueError(f"property {key!r} appears twice in node {node.name or '/'!r}")
        seen.add(key)
        out += struct.pack(">III", FDT_PROP, len(value), names.offset(key)) + _pad4(value)
    if len({c.name for c in node.children}) != len(node.children):
        raise ValueError(f"duplicate child names under {node.name or '/'!r}")
    for child in node.children:
        _emit(child, out, names, False)
    out += struct.pack(">I", FDT_END_NODE)


def encode_fdt(fdt: Fdt, *, min_size: int = 0) -> bytes:
    """The blob for ``fdt``; ``min_size`` pads it with free space (totalsize grows)."""
    struct_block = bytearray()
    names = _Strings()
    _emit(fdt.root, struct_block, names, True)
    struct_block += struct.pack(">I", FDT_END)
    rsv = b"".join(RSV_ENTRY.pack(a, s) for a, s in fdt.reservations) + RSV_ENTRY.pack(0, 0)
    off_rsv = HEADER.size  # 40: already 8-aligned, which the reservation block needs
    off_struct = off_rsv + len(rsv)
    off_strings = off_struct + len(struct_block)
    total = off_strings + len(names.data)
    total = max(total, min_size)
    header = HEADER.pack(
        FDT_MAGIC, total, off_struct, off_strings, off_rsv, FDT_VERSION, FDT_LAST_COMP_VERSION,
        fdt.boot_cpuid_phys, len(names.data), len(struct_block),
    )
    blob = header + rsv + bytes(struct_block) + bytes(names.data)
    return blob + bytes(total - len(blob))


# ---- decoding ---------------------------------------------------------------------------

def _u32(data: bytes, pos: int, what: str) -> int:
    if pos + 4 > len(data):
        raise FormatError(f"structure block ends inside {what}", offset=pos, code="bad-fdt")
    value: int = struct.unpack_from(">I", data, pos)[0]
    return value


def _cstring(data: bytes, pos: int, end: int, what: str) -> str:
    stop = data.find(b"\0", pos, end)
    if stop < 0:
        raise FormatError(f"{what} is not NUL-terminated", offset=pos, code="bad-fdt")
    try:
        return data[pos:stop].decode()
    except UnicodeDecodeError as e:
        raise FormatError(f"{what} is not UTF-8", offset=pos, code="bad-fdt") from e


class _Parser:
    def __init__(self, data: bytes, struct_start: int, struct_end: int, str_start: int, str_end: int) -> None:
        self.data = data
        self.pos = struct_start
        self.end = struct_end
        self.str_start = str_start
        self.str_end = str_end

    def token(self) -> int:
        while True:
            tok = _u32(self.data[: self.end], self.pos, "a token")
            self.pos += 4
            if tok != FDT_NOP:
                return tok

    def node(self, is_root: bool) -> FdtNode:
        at = self.pos - 4
        name = _cstring(self.data, self.pos, self.end, "node name")
        self.pos += len(name.encode()) + 1
        self.pos += -self.pos % 4
        if is_root and name:
            raise FormatError(f"root node is named {name!r}", offset=at, code="bad-fdt")
        props: list[tuple[str, bytes]] = []
        children: list[FdtNode] = []
        while True:
            tok_at = self.pos
            tok = self.token()
            if tok == FDT_PROP:
                if children:
                    raise FormatError("property after a child node", offset=tok_at, code="bad-fdt")
                props.append(self.prop(tok_at))
            elif tok == FDT_BEGIN_NODE:
                children.append(self.node(False))
            elif tok == FDT_END_NODE:
                return FdtNode(name, tuple(props), tuple(children))
            else:
                raise FormatError(f"unexpected token {tok:#x} in node {name or '/'!r}", offset=tok_at,
                                  code="bad-fdt")

    def prop(self, at: int) -> tuple[str, bytes]:
        length = _u32(self.data[: self.end], self.pos, "a property header")
        nameoff = _u32(self.data[: self.end], self.pos + 4, "a property header")
        self.pos += 8
        if self.pos + length > self.end:
            raise FormatError(f"property value of {length} bytes runs past the structure block", offset=at,
                              code="bad-fdt")
        value = self.data[self.pos : self.pos + length]
        self.pos += length + (-length % 4)
        if nameoff >= self.str_end - self.str_start:
            raise FormatError(f"property name offset {nameoff} is outside the strings block", offset=at,
                              code="bad-fdt")
        name = _cstring(self.data, self.str_start + nameoff, self.str_end, "property name")
        return name, value


def decode_fdt(data: bytes) -> Fdt:
    """Parse a blob; any inconsistency is a FormatError naming the offset."""
    if len(data) < HEADER.size:
        raise FormatError(f"{len(data)} bytes is shorter than the 40-byte FDT header", offset=0, code="bad-fdt")
    (magic, total, off_struct, off_strings, off_rsv, version, last_comp, boot_cpu, size_strings,
     size_struct) = HEADER.unpack_from(data, 0)
    if magic != FDT_MAGIC:
        raise FormatError(f"magic: observed {magic:#010x}, expected {FDT_MAGIC:#010x}", offset=0, code="bad-fdt")
    if last_comp > FDT_VERSION or version < FDT_LAST_COMP_VERSION:
        raise FormatError(f"version {version} (last compatible {last_comp}) is not readable as v17",
                          offset=20, code="bad-fdt")
    if total > len(data) or total < HEADER.size:
        raise FormatError(f"totalsize {total} does not fit the {len(data)} bytes given", offset=4, code="bad-fdt")
    for name, off, size, where in (("structure", off_struct, size_struct, 8),
                                   ("strings", off_strings, size_strings, 12)):
        if off < HEADER.size or off + size > total:
            raise FormatError(f"{name} block [{off}, {off + size}) lies outside the blob", offset=where,
                              code="bad-fdt")
    if off_struct % 4 or off_rsv % 8 or off_rsv < HEADER.size or off_rsv >= total:
        raise FormatError("misaligned or out-of-range block offset", offset=8, code="bad-fdt")
    reservations: list[tuple[int, int]] = []
    pos = off_rsv
    while True:
        if pos + RSV_ENTRY.size > total:
            raise FormatError("memory reservation block has no terminating entry", offset=pos, code="bad-fdt")
        addr, size = RSV_ENTRY.unpack_from(data, pos)
        pos += RSV_ENTRY.size
        if addr == 0 and size == 0:
            break
        reservations.append((addr, size))
    parser = _Parser(bytes(data[:total]), off_struct, off_struct + size_struct, off_strings, off_strings + size_strings)
    first_at = parser.pos
    if parser.token() != FDT_BEGIN_NODE:
        raise FormatError("structure block does not start with the root node", offset=first_at, code="bad-fdt")
    root = parser.node(True)
    end_at = parser.pos
    if parser.token() != FDT_END:
        raise FormatError("expected FDT_END after the root node", offset=end_at, code="bad-fdt")
    return Fdt(root, tuple(reservations), boot_cpu, total)


def walk(node: FdtNode, prefix: str = "") -> Iterable[tuple[str, FdtNode]]:
    """(path, node) for ``node`` and every descendant, parents first."""
    path = prefix + "/" + node.name if node.name else prefix or "/"
    yield path, node
    for child in node.children:
        yield from walk(child, "" if path == "/" else path)


def node_paths(root: FdtNode) -> Sequence[str]:
    return [path for path, _ in walk(root)]
