"""Map TOML key paths to line numbers.

tomllib returns plain dicts without positions, so this small scanner walks the text
once and records the line of every table header and key assignment.  It is not a
TOML parser: anything it cannot place falls back to the nearest enclosing key,
which still names the right line for inline tables.
"""

from __future__ import annotations

import re

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
