"""Canonical JSON: one byte string per value, and nothing else accepted."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mkimage.bundle.canon import JsonValue, canonical_json, parse_canonical
from mkimage.errors import FormatError

FUZZ = settings(max_examples=300, deadline=None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({}, b"{}"),
        ({"b": 1, "a": [True, False, -3]}, b'{"a":[true,false,-3],"b":1}'),
        ({"z": {"y": "x", "b": {}}}, b'{"z":{"b":{},"y":"x"}}'),
        ({"k": "caf\u00e9 \u2603 \U0001f600"}, '{"k":"caf\u00e9 \u2603 \U0001f600"}'.encode()),
        ({"k": 'q"b\\\n\t\x00\x1f'}, b'{"k":"q\\"b\\\\\\n\\t\\u0000\\u001f"}'),
        ({"k": "/"}, b'{"k":"/"}'),
        ({"\u00e9": 1, "z": 2, "A": 3}, '{"A":3,"z":2,"\u00e9":1}'.encode()),
        ({"big": 2**80, "neg": -(2**70)},
         b'{"big":1208925819614629174706176,"neg":-1180591620717411303424}'),
    ],
    ids=["empty", "sorted", "nested", "utf8-raw", "escapes", "slash", "key-order-codepoint",
         "bigint"],
)
def test_canonical_json(value: dict[str, JsonValue], expected: bytes) -> None:
    assert canonical_json(value) == expected
    assert parse_canonical(expected, "doc") == value


@pytest.mark.parametrize(
    "value",
    [1.0, None, (1, 2), {1: "a"}, {"a": {1, 2}}, b"bytes", {"a": [1, None]}, {"a": float("nan")},
     {"s": "\ud800"}],
    ids=["float", "none", "tuple", "int-key", "set", "bytes", "nested-none", "nan", "surrogate"],
)
def test_canonical_json_rejects(value: object) -> None:
    with pytest.raises(TypeError):
        canonical_json(value)


REJECTED: dict[str, tuple[bytes, str, int]] = {
    # case: (document, code, offset of the problem)
    "space-after-colon": (b'{"a": 1}', "non-canonical-json", 5),
    "trailing-newline": (b'{"a":1}\n', "non-canonical-json", 7),
    "leading-space": (b' {"a":1}', "non-canonical-json", 0),
    "unsorted": (b'{"b":1,"a":2}', "non-canonical-json", 2),
    "escaped-non-ascii": (b'{"a":"caf\\u00e9"}', "non-canonical-json", 9),
    "escaped-slash": (b'{"a":"\\/"}', "non-canonical-json", 6),
    "escaped-letter": (b'{"a":"\\u0041"}', "non-canonical-json", 6),
    "negative-zero": (b'{"a":-0}', "non-canonical-json", 5),
    "float": (b'{"a":1.0}', "non-canonical-json", 0),
    "exponent": (b'{"a":1e3}', "non-canonical-json", 0),
    "nan": (b'{"a":NaN}', "non-canonical-json", 0),
    "infinity": (b'{"a":-Infinity}', "non-canonical-json", 0),
    "null": (b'{"a":null}', "non-canonical-json", 0),
    "duplicate-key": (b'{"a":1,"a":1}', "non-canonical-json", 0),
    "top-level-array": (b"[1]", "non-canonical-json", 0),
    "top-level-string": (b'"x"', "non-canonical-json", 0),
    "top-level-int": (b"1", "non-canonical-json", 0),
    "lone-surrogate": (b'{"a":"\\ud800"}', "non-canonical-json", 0),
    "bom": (b'\xef\xbb\xbf{"a":1}', "bad-json", 0),
    "invalid-utf8": (b'{"a":"\xff"}', "bad-json", 6),
    "overlong-utf8": (b'{"a":"\xc0\xaf"}', "bad-json", 6),
    "not-json": (b'{"a":}', "bad-json", 5),
    "leading-zero": (b'{"a":01}', "bad-json", 6),
    "empty": (b"", "bad-json", 0),
    "single-quotes": (b"{'a':1}", "bad-json", 1),
    "after-non-ascii": ('{"\u00e9":}'.encode(), "bad-json", 6),  # byte, not char, offset
    "too-deep": (b'{"a":' + b"[" * 100000 + b"]" * 100000 + b"}", "bad-json", 0),
    "huge-int": (b'{"a":' + b"9" * 5000 + b"}", "bad-json", 0),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_parse_rejects(case: str) -> None:
    data, code, offset = REJECTED[case]
    with pytest.raises(FormatError) as info:
        parse_canonical(data, "doc.json", base_offset=1000)
    assert info.value.code == code, info.value.message
    assert info.value.offset == 1000 + offset, info.value.message
    assert "doc.json" in info.value.message


def test_parse_accepts_what_python_json_would_not_reorder() -> None:
    data = canonical_json({"tools": {"gcc": "13.2", "binutils": "2.41"}, "n": [3, 1, 2]})
    assert parse_canonical(data, "doc") == json.loads(data)


# JSON values inside the canonical subset; text excludes surrogates, which have no UTF-8.
json_values: st.SearchStrategy[JsonValue] = st.recursive(
    st.booleans() | st.integers() | st.text(st.characters(exclude_categories=["Cs"])),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(st.characters(exclude_categories=["Cs"]), max_size=5), inner,
                      max_size=4),
    max_leaves=20,
)


@FUZZ
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5))
def test_round_trip(value: dict[str, JsonValue]) -> None:
    try:
        encoded = canonical_json(value)
    except TypeError:
        # Keys drawn from st.text may contain surrogates; those must be refused, not mangled.
        assert any("\ud800" <= ch <= "\udfff" for key in value for ch in key)
        return
    assert parse_canonical(encoded, "doc") == value
    assert canonical_json(parse_canonical(encoded, "doc")) == encoded


@FUZZ
@given(st.binary(max_size=256))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    try:
        parsed = parse_canonical(data, "doc")
    except FormatError:
        return
    assert canonical_json(parsed) == data


@FUZZ
@given(st.dictionaries(st.text(max_size=4), json_values, max_size=4),
       st.integers(0, 10_000), st.integers(0, 255))
def test_fuzz_mutated_canonical(value: dict[str, JsonValue], where: int, byte: int) -> None:
    try:
        data = bytearray(canonical_json(value))
    except TypeError:
        return
    data[where % len(data)] = byte
    try:
        parsed = parse_canonical(bytes(data), "doc")
    except FormatError:
        return
    assert canonical_json(parsed) == bytes(data)
