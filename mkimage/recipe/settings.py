"""Per-field metadata that turns the recipe dataclasses into one settings table.

Each field of a recipe section carries a ``Setting`` in its metadata; the loader,
``--set``, ``recipe schema`` and docs/recipes.md all walk the same table, so they
cannot disagree.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Check = Callable[[Any], str | None]  # returns an error message, or None when fine


OCTAL_TYPE_NAME = 'permission bits (0o755 or "0755")'


@dataclass(frozen=True, slots=True)
class Setting:
    help: str
    check: Check | None = None
    example: str | None = None
    # An integer written in octal: TOML reads `mode = 755` as decimal 755 (0o1363), so the
    # loader takes 0o755 or a string of octal digits and refuses a decimal literal above 7.
    octal: bool = False


def setting(help: str, *, check: Check | None = None, example: str | None = None,
            octal: bool = False) -> dict[str, Setting]:
    return {"setting": Setting(help=help, check=check, example=example, octal=octal)}


INTERNAL = "internal"


def internal() -> dict[str, bool]:
    """Metadata of a field the loader fills in (not a TOML key, not in the settings table)."""
    return {INTERNAL: True}


def field_setting(f: dataclasses.Field[Any]) -> Setting:
    s = f.metadata.get("setting")
    if not isinstance(s, Setting):
        raise TypeError(f"recipe field {f.name} has no setting() metadata")
    return s


@dataclass(frozen=True, slots=True)
class SettingRow:
    """One row of the settings table: a leaf key, its type and its documentation."""

    key: str  # dotted, e.g. "kernel.cmdline"
    type: Any
    default: Any
    setting: Setting
    required: bool

    @property
    def type_text(self) -> str:
        """The type as docs/recipes.md and `recipe schema` spell it."""
        if not self.setting.octal:
            return type_name(self.type)
        return OCTAL_TYPE_NAME + (" (optional)" if optional_inner(self.type) is not None else "")


def section_fields(cls: type) -> Iterator[tuple[dataclasses.Field[Any], Any]]:
    """The settings of a table: every field but the internal ones."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get(INTERNAL):
            yield f, hints[f.name]


TableCheck = Callable[[Any], tuple[str, str] | None]  # (key of the table, message), or None when fine


def table_check(check: TableCheck) -> Callable[[type], type]:
    """Attach a rule between keys of one table; the loader runs it on each converted table
    and reports the key it returns (or the table itself for "")."""

    def mark(cls: type) -> type:
        cls.__table_check__ = staticmethod(check)  # type: ignore[attr-defined]
        return cls

    return mark


def run_table_check(value: object) -> tuple[str, str] | None:
    check: TableCheck | None = getattr(type(value), "__table_check__", None)
    return None if check is None else check(value)


def iter_rows(cls: type, prefix: str = "") -> Iterator[SettingRow]:
    """Walk a dataclass tree; nested section dataclasses are recursed into."""
    for f, tp in section_fields(cls):
        key = f"{prefix}{f.name}"
        if is_section(tp):
            yield from iter_rows(tp, key + ".")
            continue
        default: Any = dataclasses.MISSING
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        yield SettingRow(key, tp, default, field_setting(f), default is dataclasses.MISSING)


def is_section(tp: Any) -> bool:
    """A nested table that is part of the settings tree (not a list item type)."""
    return dataclasses.is_dataclass(tp) and getattr(tp, "__section__", False)


def optional_inner(tp: Any) -> Any | None:
    """``X | None`` → X; anything else → None."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def type_name(tp: Any) -> str:
    """How a type is spelled in error messages and docs."""
    inner = optional_inner(tp)
    if inner is not None:
        return f"{type_name(inner)} (optional)"
    origin = typing.get_origin(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        return f"list of {type_name(item)}"
    if origin is dict:
        _, val = typing.get_args(tp)
        return f"table of {type_name(val)}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(f'"{m.value}"' for m in tp)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return "table {" + ", ".join(f.name for f, _ in section_fields(tp)) + "}"
    named = getattr(tp, "__type_name__", None)  # scalar types of the model name themselves
    if isinstance(named, str):
        return named
    builtin = {str: "string", int: "integer", bool: "boolean", Path: "path"}.get(tp)
    if builtin is None:
        raise TypeError(f"recipe type {tp!r} has no documented name (give it a __type_name__)")
    return builtin


# ---- reusable checks --------------------------------------------------------------

def matches(pattern: str, what: str) -> Check:
    rx = re.compile(pattern)

    def check(value: Any) -> str | None:
        return None if rx.fullmatch(str(value)) else f"expected {what}, got {value!r}"

    return check


def in_range(lo: int, hi: int) -> Check:
    def check(value: Any) -> str | None:
        return None if lo <= value <= hi else f"expected {lo}..{hi}, got {value}"

    return check


def file_exists(value: Any) -> str | None:
    if value is None:
        return None
    return None if Path(value).is_file() else f"no such file: {value}"


def dir_exists(value: Any) -> str | None:
    if value is None:
        return None
    return None if Path(value).is_dir() else f"no such directory: {value}"


def optional(check: Check) -> Check:
    """``check`` for a value that may be left unset (None)."""

    def run(value: Any) -> str | None:
        return None if value is None else check(value)

    return run


def each(check: Check) -> Check:
    def run_all(values: Any) -> str | None:
        for v in values:
            msg = check(v)
            if msg:
                return msg
        return None

    return run_all
