"""The Kconfig model: requested symbols, merging, and the check that they survived.

Fragments use the kernel's own syntax (``CONFIG_X=y``, ``# CONFIG_X is not set``).
Merging follows merge_config.sh: a fragment overrides the base config.  Two
fragments disagreeing is an error naming both (a silent last-one-wins would hide
the clash), while the recipe's inline ``[kernel.options]`` are applied last and may
override a fragment on purpose.  After ``olddefconfig`` every requested symbol is
compared with the final .config; one that did not stick fails the build with what
the tree's Kconfig files say it depends on.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mkimage.errors import MkspawnError

_SET = re.compile(r"CONFIG_([A-Za-z0-9_]+)=(.*)")
_UNSET = re.compile(r"# CONFIG_([A-Za-z0-9_]+) is not set")
_VALUE = re.compile(r'[ymn]|-?[0-9]+|0[xX][0-9a-fA-F]+|"(?:[^"\\]|\\.)*"')
_SYMBOL_IN_EXPR = re.compile(r"\b[A-Z][A-Z0-9_]*\b")
NOT_SET = "n"


class KernelConfigError(MkspawnError):
    """Requested kernel configuration that cannot be honoured."""

    code = "kernel-config"


@dataclass(frozen=True, slots=True)
class Requested:
    value: str  # "y", "m", "n", a number, or a quoted string as written in .config
    origin: str  # the fragment path (and line), or "[kernel.options]"


@dataclass(frozen=True, slots=True)
class Dropped:
    symbol: str
    requested: Requested
    actual: str  # "n" when absent or not set
    why: str = ""  # what the Kconfig files say, when we found something

    def describe(self) -> str:
        text = f"CONFIG_{self.symbol}: requested {self.requested.value}, got {self.actual} ({self.requested.origin})"
        return f"{text}: {self.why}" if self.why else text


def parse_config(text: str, origin: str = "") -> dict[str, Requested]:
    """Symbols a .config or fragment sets, in kernel syntax.  Other comments are ignored."""
    out: dict[str, Requested] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        where = f"{origin}:{lineno}" if origin else ""
        if m := _UNSET.fullmatch(line):
            out[m.group(1)] = Requested(NOT_SET, where)
        elif m := _SET.fullmatch(line):
            value = m.group(2).strip()
            if not _VALUE.fullmatch(value):
                raise KernelConfigError(f"{where}: CONFIG_{m.group(1)}: unparsable value {value!r}",
                                        code="bad-fragment")
            out[m.group(1)] = Requested(value, where)
        elif line and not line.startswith("#"):
            raise KernelConfigError(f"{where}: not a Kconfig line: {line!r}", code="bad-fragment")
    return out


def config_values(text: str) -> dict[str, str]:
    """Final .config → symbol: value, with "n" for '# ... is not set'."""
    return {sym: req.value for sym, req in parse_config(text).items()}


@dataclass(slots=True)
class ConfigRequest:
    """Everything asked of the kernel config, in order, with where each request came from."""

    symbols: dict[str, Requested] = field(default_factory=dict)

    def add_fragment(self, fragment: Mapping[str, Requested]) -> None:
        for sym, req in fragment.items():
            earlier = self.symbols.get(sym)
            if earlier is not None and earlier.value != req.value:
                raise KernelConfigError(
                    f"conflicting fragments: CONFIG_{sym}={earlier.value} in {earlier.origin} "
                    f"but {req.value} in {req.origin}",
                    code="config-conflict",
                    hint="remove one of them, or settle it in [kernel.options]",
                )
            if earlier is None:
                self.symbols[sym] = req

    def add_options(self, options: Mapping[str, str], origin: str) -> None:
        for sym, value in options.items():
            if not _VALUE.fullmatch(value):
                raise KernelConfigError(
                    f"{origin}: {sym} = {value!r}: expected y, m, n, a number, or a quoted string",
                    code="bad-fragment",
                )
            self.symbols[sym] = Requested(value, origin)

    def as_fragment(self) -> str:
        """Canonical text of the request (sorted), the form that goes into the cache key."""
        return "".join(f"{_line(sym, req.value)}\n" for sym, req in sorted(self.symbols.items()))


def _line(sym: str, value: str) -> str:
    return f"# CONFIG_{sym} is not set" if value == NOT_SET else f"CONFIG_{sym}={value}"


def merge_into(base_text: str, request: ConfigRequest) -> str:
    """The base .config with every requested symbol's line replaced (merge_config.sh -m)."""
    kept = []
    for raw in base_text.splitlines():
        line = raw.strip()
        m = _SET.fullmatch(line) or _UNSET.fullmatch(line)
        if m is None or m.group(1) not in request.symbols:
            kept.append(raw)
    kept.append("# mkspawn: requested symbols")
    kept.extend(_line(sym, req.value) for sym, req in request.symbols.items())
    return "\n".join(kept) + "\n"


def find_dropped(request: ConfigRequest, final_text: str) -> list[Dropped]:
    final = config_values(final_text)
    dropped = []
    for sym, req in request.symbols.items():
        actual = final.get(sym, NOT_SET)
        if actual != req.value:
            dropped.append(Dropped(sym, req, actual))
    return dropped


# ---- explaining a drop from the Kconfig sources ------------------------------------

_BLOCK_START = re.compile(r"(menuconfig|config)\s+([A-Za-z0-9_]+)\s*$")
_TYPE = re.compile(r"(bool|tristate|int|hex|string|def_bool|def_tristate)\b\s*(.*)")
_STRUCTURE = re.compile(r"(menu|endmenu|choice|endchoice|if|endif|source|comment|mainmenu|menuconfig|config)\b")


@dataclass(slots=True)
class SymbolInfo:
    depends: list[str] = field(default_factory=list)
    has_prompt: bool = False
    files: list[str] = field(default_factory=list)


def scan_kconfig(tree: str, srcarch: str, symbols: Iterable[str]) -> tuple[dict[str, SymbolInfo], dict[str, list[str]]]:
    """Definitions of ``symbols`` and who selects them, from the tree's Kconfig files.

    A line-level scan, not a Kconfig parser: it records ``depends on`` lines, the
    enclosing ``if`` and ``menu ... depends on`` blocks, whether a prompt exists, and
    ``select`` lines naming the symbols.  Other architectures' Kconfig files are
    skipped so their definitions do not muddle the answer.
    """
    wanted = set(symbols)
    info: dict[str, SymbolInfo] = {}
    selected_by: dict[str, list[str]] = {}
    for path in _kconfig_files(tree, srcarch):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        _scan_file(os.path.relpath(path, tree), lines, wanted, info, selected_by)
    return info, selected_by


def _kconfig_files(tree: str, srcarch: str) -> Iterable[str]:
    for dirpath, dirnames, filenames in os.walk(tree):
        rel = os.path.relpath(dirpath, tree)
        if rel == "arch":
            dirnames[:] = [d for d in dirnames if d == srcarch]
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("Kconfig"):
                yield os.path.join(dirpath, name)


def _scan_file(
    rel: str, lines: list[str], wanted: set[str], info: dict[str, SymbolInfo], selected_by: dict[str, list[str]]
) -> None:
    conditions: list[tuple[str, str]] = []  # ("if" | "menu", condition) of enclosing blocks
    current: str | None = None  # symbol of the block being read
    owner: str | None = None  # any config block (for select lines)
    help_indent: int | None = None
    menu_open = False  # right after "menu": its depends apply to the whole menu
    for raw in lines:
        stripped = raw.strip()
        indent = len(raw) - len(raw.lstrip())
        if help_indent is not None:
            if not stripped or indent > help_indent:
                continue
            help_indent = None
        if not stripped or stripped.startswith("#"):
            continue
        word = stripped.split()[0]
        if _STRUCTURE.fullmatch(word):
            current = owner = None
            menu_open = False
            m = _BLOCK_START.fullmatch(stripped)
            if m:
                owner = m.group(2)
                if owner in wanted:
                    current = owner
                    entry = info.setdefault(owner, SymbolInfo())
                    entry.files.append(rel)
                    entry.depends.extend(cond for _, cond in conditions if cond)
            elif word == "if":
                conditions.append(("if", stripped[2:].strip()))
            elif word == "menu":
                conditions.append(("menu", ""))
                menu_open = True
            elif word in ("endif", "endmenu") and conditions:
                conditions.pop()
            continue
        if word in ("help", "---help---"):
            help_indent = indent
            continue
        if stripped.startswith("depends on"):
            cond = stripped[len("depends on"):].strip()
            if menu_open and conditions:
                conditions[-1] = ("menu", " && ".join(filter(None, [conditions[-1][1], cond])))
            elif current is not None:
                info[current].depends.append(cond)
            continue
        if stripped.startswith("select ") and owner is not None:
            target = stripped.split()[1]
            if target in wanted:
                selected_by.setdefault(target, []).append(owner)
            continue
        if current is not None:
            t = _TYPE.fullmatch(stripped)
            if (t and t.group(1) in ("bool", "tristate", "int", "hex", "string") and t.group(2).startswith('"')) or (
                word == "prompt"
            ):
                info[current].has_prompt = True


def explain(dropped: list[Dropped], tree: str, srcarch: str, final_text: str) -> list[Dropped]:
    """``dropped`` with ``why`` filled in from the Kconfig sources and the final values."""
    info, selected_by = scan_kconfig(tree, srcarch, [d.symbol for d in dropped])
    final = config_values(final_text)
    out = []
    for d in dropped:
        found = info.get(d.symbol)
        if found is None:
            why = f"no 'config {d.symbol}' in this tree's Kconfig files (misspelt, or not in this kernel)"
        else:
            why = _why(d.symbol, found, selected_by.get(d.symbol, []), final)
        out.append(Dropped(d.symbol, d.requested, d.actual, why))
    return out


def _why(symbol: str, found: SymbolInfo, selectors: list[str], final: Mapping[str, str]) -> str:
    parts = []
    deps = list(dict.fromkeys(found.depends))
    if deps:
        names = list(dict.fromkeys(n for dep in deps for n in _SYMBOL_IN_EXPR.findall(dep)))
        values = ", ".join(f"{n}={final.get(n, NOT_SET)}" for n in names)
        parts.append(f"depends on {' && '.join(f'({d})' if len(deps) > 1 else d for d in deps)}"
                     + (f" [now {values}]" if values else ""))
    if not found.has_prompt:
        by = f"; selected by {', '.join(sorted(set(selectors)))}" if selectors else ""
        parts.append(f"it has no prompt and cannot be set directly{by}")
    if not parts:
        parts.append(f"defined in {', '.join(found.files)}; no unmet 'depends on' found (a choice, range or "
                     "reverse dependency may override it)")
    return "; ".join(parts)
