"""The pure-Python FDT codec against the real dtc and fdtget."""

from __future__ import annotations

import contextlib
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mkimage.devicetree.fdt import Fdt, FdtNode, cells, decode_fdt, encode_fdt, string, strings, u64_le
from mkimage.errors import FormatError
from tests.conftest import needs_tool
from tests.devicetree.dt_helpers import compile_dts, tool

SAMPLE = Fdt(
    FdtNode("", (("compatible", string("acme,board")), ("#address-cells", cells(2))), (
        FdtNode("cpus", (("list", cells(1, 2, 3)),)),
        FdtNode("memory@0", (("size", cells(0x20000000, bits=64)), ("le", u64_le(5)), ("flag", b""))),
        FdtNode("names", (("compatible", strings(["a", "bc"])),), (FdtNode("deep", (("x", b"\x01\x02\x03"),)),)),
    )),
    reservations=((0x1000, 0x2000),),
)


def test_round_trip() -> None:
    blob = encode_fdt(SAMPLE)
    assert decode_fdt(blob) == SAMPLE
    assert encode_fdt(decode_fdt(blob)) == blob


def test_dtc_and_fdtget_read_what_we_write(tmp_path: Path) -> None:
    needs_tool("dtc", "fdtget")
    path = tmp_path / "ours.dtb"
    path.write_bytes(encode_fdt(SAMPLE))
    dts = tool("dtc", "-I", "dtb", "-O", "dts", path)
    assert "/memreserve/\t0x0000000000001000 0x0000000000002000;" in dts
    assert 'compatible = "a\\0bc";' in dts
    assert "x = [01 02 03];" in dts
    assert tool("fdtget", "-t", "x", path, "/cpus", "list").split() == ["1", "2", "3"]
    assert tool("fdtget", "-t", "x", path, "/memory@0", "size").split() == ["0", "20000000"]
    assert tool("fdtget", "-t", "bx", path, "/memory@0", "le").split() == ["5", "0", "0", "0", "0", "0", "0", "0"]
    assert tool("fdtget", "-t", "s", path, "/", "compatible").strip() == "acme,board"
    assert tool("fdtget", "-l", path, "/names").split() == ["deep"]


def test_we_read_what_dtc_writes(tmp_path: Path) -> None:
    needs_tool("dtc")
    src = tmp_path / "x.dts"
    src.write_text('/dts-v1/;\n/memreserve/ 0x1000 0x2000;\n'
                   '/ { a = <1 2>; b = "s"; c; n@1 { d = /bits/ 64 <7>; }; };\n')
    fdt = decode_fdt(compile_dts(src, tmp_path / "x.dtb").read_bytes())
    assert fdt.reservations == ((0x1000, 0x2000),)
    assert fdt.root.prop("a") == cells(1, 2) and fdt.root.prop("b") == b"s\0" and fdt.root.prop("c") == b""
    node = fdt.root.find("/n@1")
    assert node is not None and node.prop("d") == cells(7, bits=64)


def test_min_size_pads_with_free_space(tmp_path: Path) -> None:
    blob = encode_fdt(SAMPLE, min_size=4096)
    assert len(blob) == 4096 and struct.unpack_from(">I", blob, 4)[0] == 4096
    assert decode_fdt(blob) == SAMPLE


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda b: b[:30], "shorter than the 40-byte FDT header"),
    (lambda b: b"\0\0\0\0" + b[4:], "magic: observed 0x00000000"),
    (lambda b: b[:4] + struct.pack(">I", len(b) + 8) + b[8:], "does not fit"),
    (lambda b: b[:-1], "does not fit"),
])
def test_malformed_blobs_are_format_errors(mutate: object, message: str) -> None:
    blob = encode_fdt(SAMPLE)
    with pytest.raises(FormatError) as e:
        decode_fdt(mutate(blob))  # type: ignore[operator]
    assert message in e.value.message


@pytest.mark.parametrize(("node", "message"), [
    (FdtNode("", (("a", b""), ("a", b""))), "appears twice"),
    (FdtNode("", (), (FdtNode("bad name"),)), "bad node name"),
    (FdtNode("", (), (FdtNode("x"), FdtNode("x"))), "duplicate child"),
])
def test_writer_refuses_what_dtc_would(node: FdtNode, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_fdt(Fdt(node))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_any_corruption_is_a_record_or_format_error(data: st.DataObject) -> None:
    blob = bytearray(encode_fdt(SAMPLE))
    for _ in range(data.draw(st.integers(1, 4))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    with contextlib.suppress(FormatError):
        decode_fdt(bytes(blob))
