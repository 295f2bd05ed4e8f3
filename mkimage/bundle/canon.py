"""The one definition of canonical JSON bytes: what gets signed and what gets verified.

Canonical means UTF-8, keys sorted, ``(",", ":")`` separators, non-ASCII written as-is,
and only objects with string keys, arrays, strings, integers and booleans.  Floats and
null are excluded so that every value has exactly one spelling.  A document is accepted
only if re-encoding what was parsed gives back the very same bytes.  Typed accessors for
the decoded objects, shared by every strict ``from_dict``, close the module.
"""

from __future__ import annotations

import enum
import json
from typing import NoReturn, TypeAlias, TypeVar

from mkimage.errors import FormatError

JsonValue: TypeAlias = dict[str, "JsonValue"] | list["JsonValue"] | str | int | bool
JsonObject: TypeAlias = dict[str, JsonValue]


def canonical_json(obj: object) -> bytes:
    """Encode ``obj``; TypeError for a type outside the canonical subset."""
    _check_types(obj, "$")
    # ensure_ascii=False keeps one spelling per string; \u escapes would be a second one.
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8")


def _check_types(obj: object, where: str) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{where}: key {key!r} is not a string")
            _check_str(key, where)
            _check_types(value, f"{where}.{key}")
    elif isinstance(obj, list):
        for index, value in enumerate(obj):
            _check_types(value, f"{where}[{index}]")
    elif isinstance(obj, str):
        _check_str(obj, where)
    elif not isinstance(obj, int):  # bool is an int
        raise TypeError(f"{where}: {type(obj).__name__} is not allowed in canonical JSON")


def _check_str(value: str, where: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        # A lone surrogate has no UTF-8 form, so it could only be written as a \u escape.
        raise TypeError(f"{where}: string is not valid Unicode") from e


def parse_canonical(data: bytes, what: str, *, base_offset: int = 0) -> JsonObject:
    """Decode a canonical JSON object or raise FormatError.

    ``what`` names the document in messages; ``base_offset`` is where ``data`` starts in
    its container, so offsets in errors point into the file the user has.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(
            f"{what}: not UTF-8", offset=base_offset + e.start, code="bad-json"
        ) from e
    try:
        parsed = json.loads(
            text,
            parse_float=lambda s: _reject(what, f"number {s} is not an integer", base_offset),
            parse_constant=lambda s: _reject(what, f"{s} is not allowed", base_offset),
            object_pairs_hook=lambda pairs: _unique_keys(what, pairs, base_offset),
        )
    except json.JSONDecodeError as e:
        offset = base_offset + len(text[: e.pos].encode("utf-8"))
        raise FormatError(f"{what}: not JSON: {e.msg}", offset=offset, code="bad-json") from e
    except (RecursionError, ValueError) as e:
        # Nesting too deep for the parser, or an integer beyond Python's digit limit.
        raise FormatError(
            f"{what}: cannot be decoded: {e}", offset=base_offset, code="bad-json"
        ) from e
    if not isinstance(parsed, dict):
        raise FormatError(
            f"{what}: top level is {type(parsed).__name__}, expected an object",
            offset=base_offset,
            code="non-canonical-json",
        )
    try:
        again = canonical_json(parsed)
    except (TypeError, RecursionError) as e:
        raise FormatError(
            f"{what}: {e}", offset=base_offset, code="non-canonical-json"
        ) from e
    if again != data:
        index = next(
            (i for i, (a, b) in enumerate(zip(again, data, strict=False)) if a != b), min(len(again), len(data))
        )
        raise FormatError(
            f"{what}: not in canonical form (sorted keys, no whitespace, no escapes "
            "beyond the required ones)",
            offset=base_offset + index,
            code="non-canonical-json",
        )
    return parsed


# The json hooks do not learn where they are, so these errors point at the document.


def _reject(what: str, reason: str, offset: int) -> NoReturn:
    raise FormatError(f"{what}: {reason}", offset=offset, code="non-canonical-json")


def _unique_keys(what: str, pairs: list[tuple[str, JsonValue]], offset: int) -> JsonObject:
    result: JsonObject = {}
    for key, value in pairs:
        if key in result:
            raise FormatError(
                f"{what}: key {key!r} appears twice", offset=offset, code="non-canonical-json"
            )
        result[key] = value
    return result


# Typed access to decoded documents, for strict ``from_dict`` methods.  ``where`` is the
# path prefix of the enclosing object ("components[2]."), so every error names the full
# field path; JSON type names are used because that is what the user wrote.  The take_*
# helpers pop their key, so whatever is left for reject_unknown is a field nobody knows.

_E = TypeVar("_E", bound=enum.StrEnum)


def json_type_name(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _bad_type(path: str, value: object, expected: str) -> FormatError:
    return FormatError(
        f"{path}: observed {json_type_name(value)}, expected {expected}", code="bad-field"
    )


def _take(d: dict[str, object], key: str, where: str) -> object:
    if key not in d:
        raise FormatError(f"{where}{key}: missing", code="missing-field")
    return d.pop(key)


def expect_str(value: object, path: str) -> str:
    if not isinstance(value, str):
        raise _bad_type(path, value, "string")
    return value


def expect_object(value: object, path: str) -> dict[str, object]:
    if not isinstance(value, dict):
        raise _bad_type(path, value, "object")
    return dict(value)


def take_str(d: dict[str, object], key: str, where: str) -> str:
    return expect_str(_take(d, key, where), f"{where}{key}")


def take_int(d: dict[str, object], key: str, where: str) -> int:
    value = _take(d, key, where)
    # bool is an int subclass in Python but a different type in JSON.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad_type(f"{where}{key}", value, "integer")
    return value


def take_list(d: dict[str, object], key: str, where: str) -> list[object]:
    value = _take(d, key, where)
    if not isinstance(value, list):
        raise _bad_type(f"{where}{key}", value, "array")
    return list(value)


def take_object(d: dict[str, object], key: str, where: str) -> dict[str, object]:
    return expect_object(_take(d, key, where), f"{where}{key}")


def take_enum(d: dict[str, object], key: str, enum_type: type[_E], where: str) -> _E:
    value = take_str(d, key, where)
    try:
        return enum_type(value)
    except ValueError as e:
        choices = ", ".join(member.value for member in enum_type)
        raise FormatError(
            f"{where}{key}: observed {value!r}, expected one of {choices}", code="bad-field"
        ) from e


def take_type_tag(d: dict[str, object], expected: str, where: str) -> None:
    value = take_str(d, "_type", where)
    if value != expected:
        raise FormatError(
            f"{where}_type: observed {value!r}, expected {expected!r}", code="bad-field"
        )


def reject_unknown(d: dict[str, object], where: str) -> None:
    if d:
        names = ", ".join(sorted(f"{where}{key}" for key in d))
        raise FormatError(f"unknown field(s): {names}", code="unknown-field")
