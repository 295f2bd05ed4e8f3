"""Map TOML key paths to line numbers.

tomllib returns plain dicts without positions, so this small scanner walks the text
once and records the line of every table header and key assignment.  It is not a
TOML parser: anything it cannot place falls back to the nearest enclosing key,
which still names the right line for inline tables.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from mkimage.errors import InputError, Location, MkspawnError, RecipeError

KeyPath = tuple[str | int, ...]

_BARE = r"[A-Za-z0-9_-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"|\'[^\']*\''
_KEY = rf"(?:{_BARE}|{_QUOTED})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER_RE = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?")
_ASSIGN_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART_RE = re.compile(_KEY)


def split_dotted(text: str) -> tuple[str, ...]:
    parts = []
    for m in _PART_RE.finditer(text):
        part = m.group(0)
        if part[0] in "\"'":
            part = part[1:-1]
        parts.append(part)
    return tuple(parts)


def _strip_strings(line: str) -> str:
    """The line with string contents blanked, so brackets inside strings don't count."""
    return re.sub(_QUOTED, '""', line)


def scan_locations(text: str) -> dict[KeyPath, int]:
    locs: dict[KeyPath, int] = {}
    table: KeyPath = ()
    array_counts: dict[tuple[str, ...], int] = {}
    in_multiline: str | None = None
    # While inside a multi-line array value: the key path of the array, bracket depth
    # and the index of the next inline-table element.
    array_key: KeyPath | None = None
    depth = 0
    element = 0
    for lineno, line in enumerate(text.splitlines(), start=1):
        if in_multiline:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        bare = _strip_strings(line).split("#", 1)[0]
        if array_key is not None:
            for ch in bare:
                if ch in "[{":
                    if ch == "{" and depth == 1:
                        locs.setdefault((*array_key, element), lineno)
                        element += 1
                    depth += 1
                elif ch in "]}":
                    depth -= 1
            if depth <= 0:
                array_key = None
            continue
        header = _HEADER_RE.match(line)
        if header:
            path = split_dotted(header.group(2))
            if header.group(1) == "[[":
                index = array_counts.get(path, 0)
                array_counts[path] = index + 1
                locs.setdefault(path, lineno)
                table = (*path, index)
            else:
                table = path
            locs.setdefault(table, lineno)
            continue
        assign = _ASSIGN_RE.match(line)
        if not assign:
            continue
        key = (*table, *split_dotted(assign.group(1)))
        locs.setdefault(key, lineno)
        rest = line[assign.end():]
        for quote in ('"""', "'''"):
            if rest.count(quote) % 2 == 1:
                in_multiline = quote
        value = _strip_strings(rest).split("#", 1)[0]
        opened = value.count("[") + value.count("{") - value.count("]") - value.count("}")
        if opened > 0 and value.lstrip().startswith("["):
            array_key, depth, element = key, opened, 0
            if value.count("{") > 0:
                element = value.count("{")  # elements opened on the key's own line
                for i in range(element):
                    locs.setdefault((*key, i), lineno)
    return locs


def nearest(locs: dict[KeyPath, int], path: KeyPath) -> int | None:
    """Line of ``path`` or of its closest recorded ancestor."""
    for n in range(len(path), 0, -1):
        line = locs.get(path[:n])
        if line is not None:
            return line
    return None


_DOTTED_PART_RE = re.compile(r"([^.\[\]]+)|\[(\d+)\]")
_NOWHERE = Location(None)


def parse_key(dotted: str) -> KeyPath | None:
    """``initramfs.files[0].src`` → ("initramfs", "files", 0, "src"); None for text that
    is not a key path (e.g. "initramfs (default init)")."""
    if not re.fullmatch(r"[a-z_]+(\.[a-z0-9_]+|\[\d+\])*", dotted):
        return None
    return tuple(int(index) if index else name for name, index in _DOTTED_PART_RE.findall(dotted))


def key_error(key: str, message: str, *, code: str, hint: str | None = None) -> MkspawnError:
    """An error about the recipe key ``key`` met after loading (e.g. a host file the stage
    reads).  Its file and line are filled in by ``KeyLocations.locate``; a ``key`` that
    is only a description gives a plain InputError."""
    if parse_key(key) is None:
        return InputError(f"{key}: {message}", code=code, hint=hint)
    return RecipeError(_NOWHERE, key, message, code=code, hint=hint)


@dataclass(frozen=True)
class KeyLocations:
    """Where each key of a loaded recipe was set, so that stages can report file:line."""

    by_key: Mapping[KeyPath, Location] = field(default_factory=lambda: MappingProxyType({}))

    def of(self, path: KeyPath) -> Location:
        for n in range(len(path), -1, -1):
            found = self.by_key.get(path[:n])
            if found is not None:
                return found
        return _NOWHERE

    def locate(self, error: RecipeError) -> RecipeError:
        """``error`` with its location filled in from its key, when it has none yet."""
        path = parse_key(error.key) if error.key and error.loc == _NOWHERE else None
        if path is None:
            return error
        return RecipeError(self.of(path), error.key, error.message, code=error.code, hint=error.hint)
