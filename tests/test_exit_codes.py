"""docs/exit-codes.md against the code: the statuses, and every code under the status it
really exits with."""

from __future__ import annotations

import ast
import importlib
import re
from collections import defaultdict
from pathlib import Path

from mkimage import cli
from mkimage.errors import ExitCode, FormatError, MkspawnError

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "mkimage"
DOC = REPO / "docs" / "exit-codes.md"
# FormatErrors of the bundle format reach the user only through opened_bundle, which
# re-raises them as VerifyError (3).
BUNDLE_FORMAT = {"bundle/tarball.py", "bundle/container.py", "bundle/canon.py", "bundle/manifest.py",
                 "bundle/system_manifest.py", "bundle/sbom.py", "bundle/provenance.py"}
# Printed by the CLI boundary itself rather than raised.
BOUNDARY = {"usage": ExitCode.USAGE, "interrupted": ExitCode.INTERRUPTED, "terminated": ExitCode.TERMINATED}
CODE = re.compile(r"`([a-z0-9<>-]+)`")


def _normal(code: str) -> str:
    """``check-<outcome>`` in the doc and f"check-{outcome}" in the source are one code."""
    return re.sub(r"<[^>]*>|\{[^}]*\}", "*", code)


def raised_codes() -> dict[str, set[int]]:
    """code → the statuses it exits with, from every ``raise SomeError(..., code=...)``."""
    found: dict[str, set[int]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        if path.name == "__main__.py":
            continue  # entry points: importing one runs it
        dotted = rel.removesuffix(".py").replace("/", ".").removesuffix(".__init__")
        module = importlib.import_module(f"mkimage.{dotted}")
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            func = node.exc.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            cls = getattr(module, name, None)
            if not (isinstance(cls, type) and issubclass(cls, MkspawnError)):
                continue
            given = next((k.value for k in node.exc.keywords if k.arg == "code"), None)
            if given is None:
                code = cls.code
            elif isinstance(given, ast.Constant) and isinstance(given.value, str):
                code = given.value
            elif isinstance(given, ast.JoinedStr):
                code = _normal(ast.unparse(given)[2:-1])
            else:
                continue  # passed through from another error (code=e.code): counted where it is raised
            status = ExitCode.VERIFY_REJECTED if issubclass(cls, FormatError) and rel in BUNDLE_FORMAT \
                else cls.exit_code
            found[code].add(int(status))
    for code, status in BOUNDARY.items():
        found[code].add(int(status))
    return found


def documented() -> tuple[dict[int, set[str]], dict[str, set[int]]]:
    """(status → typical codes from the table, code → statuses from 'Every code')."""
    text = DOC.read_text()
    table: dict[int, set[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            table[int(cells[0])] = {_normal(c) for c in CODE.findall(cells[2])}
    every: dict[str, set[int]] = defaultdict(set)
    section = text.split("## Every code", 1)[1]
    for status, codes in re.findall(r"^- \*\*(\d+)\*\*: (.*)$", section, re.M):
        for code in CODE.findall(codes):
            every[_normal(code)].add(int(status))
    return table, every


def test_statuses_match_exit_code_enum() -> None:
    table, _ = documented()
    assert sorted(table) == sorted(int(c) for c in ExitCode)
    assert (cli.EXIT_SIGINT, cli.EXIT_SIGTERM) == (ExitCode.INTERRUPTED, ExitCode.TERMINATED)


def test_every_raised_code_is_documented_under_its_status() -> None:
    raised = raised_codes()
    _, every = documented()
    wrong = {code: (sorted(every.get(code, ())), sorted(statuses))
             for code, statuses in raised.items() if every.get(code) != statuses}
    assert not wrong, f"code: (documented statuses, real statuses): {wrong}"
    stale = sorted(set(every) - set(raised))
    assert not stale, f"documented but never raised: {stale}"


def test_typical_codes_are_listed_under_their_status() -> None:
    table, every = documented()
    for status, codes in table.items():
        for code in codes:
            assert status in every.get(code, set()), f"{code} is typical of {status} but not listed there"
