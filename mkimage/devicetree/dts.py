"""A small typed model of device-tree source, rendered as .dts text for dtc.

The generated trees are built from these records, so the same record says both how a
property is spelt in the .dts (``/bits/ 64 <…>``, a string list) and which bytes dtc
must produce for it (``encode``), which is what the tests compare blobs against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mkimage.devicetree.fdt import FdtNode, cells, strings


@dataclass(frozen=True, slots=True)
class Cells:
    """``<…>`` cells of 32 bits, or ``/bits/ 64 <…>``."""

    values: tuple[int, ...]
    bits: int = 32

    def encode(self) -> bytes:
        return cells(*self.values, bits=self.bits)

    def render(self) -> str:
        body = "<" + " ".join(f"{v:#x}" for v in self.values) + ">"
        return body if self.bits == 32 else f"/bits/ {self.bits} {body}"


@dataclass(frozen=True, slots=True)
class Strings:
    values: tuple[str, ...]

    def encode(self) -> bytes:
        return strings(self.values)

    def render(self) -> str:
        return ", ".join(quote(v) for v in self.values)


@dataclass(frozen=True, slots=True)
class Flag:
    """An empty (boolean) property."""

    def encode(self) -> bytes:
        return b""

    def render(self) -> str:
        return ""


@dataclass(frozen=True, slots=True)
class Bytes:
    """A byte string (a digest), ``[…]`` in dtc's syntax."""

    data: bytes

    def encode(self) -> bytes:
        return self.data

    def render(self) -> str:
        return "[" + " ".join(f"{b:02x}" for b in self.data) + "]"


Value = Cells | Strings | Flag | Bytes


def u32(*values: int) -> Cells:
    return Cells(tuple(values), 32)


def u64(*values: int) -> Cells:
    return Cells(tuple(values), 64)


def text(*values: str) -> Strings:
    return Strings(tuple(values))


@dataclass(frozen=True, slots=True)
class DtsNode:
    name: str
    properties: tuple[tuple[str, Value], ...] = ()
    children: tuple[DtsNode, ...] = ()

    def to_fdt(self) -> FdtNode:
        """The node as dtc compiles it: the expected tree for blob comparisons."""
        return FdtNode(
            self.name,
            tuple((k, v.encode()) for k, v in self.properties),
            tuple(c.to_fdt() for c in self.children),
        )


def node(name: str, *items: tuple[str, Value] | DtsNode | None) -> DtsNode:
    """Build a node from properties and children in any order (children are kept after
    properties, as the FDT requires); ``None`` items are skipped for optional parts."""
    props = tuple(i for i in items if isinstance(i, tuple))
    kids = tuple(i for i in items if isinstance(i, DtsNode))
    return DtsNode(name, props, kids)


def quote(value: str) -> str:
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return '"' + "".join(out) + '"'


def _render_node(n: DtsNode, depth: int, lines: list[str]) -> None:
    pad = "\t" * depth
    lines.append(f"{pad}{n.name or '/'} {{")
    for key, value in n.properties:
        rendered = value.render()
        lines.append(f"{pad}\t{key};" if rendered == "" else f"{pad}\t{key} = {rendered};")
    for i, child in enumerate(n.children):
        if i or n.properties:
            lines.append("")
        _render_node(child, depth + 1, lines)
    lines.append(f"{pad}}};")


def render_dts(root: DtsNode, *, plugin: bool = False, comment: str = "", includes: Sequence[Path] = ()) -> str:
    """The .dts text; each include is appended with ``/include/`` so its nodes merge into
    the tree and dtc reports errors in it against that file's own lines."""
    lines = ["/dts-v1/;"]
    if plugin:
        lines.append("/plugin/;")
    if comment:
        lines.append("")
        lines.extend(f"// {line}".rstrip() for line in comment.splitlines())
    lines.append("")
    _render_node(root, 0, lines)
    for path in includes:
        lines.append(f"/include/ {quote(str(path))}")
    return "\n".join(lines) + "\n"
