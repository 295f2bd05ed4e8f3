"""Architecture rules that code review keeps forgetting, checked on the source."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mkimage"
# Data flows one way: a stage may import the shared modules and earlier stages only.
STAGES = ["recipe", "kernel", "initramfs", "devicetree", "acpi", "handover", "signing", "bundle", "registry", "qemu",
          "loader"]
SHARED = {"errors", "run", "outputs", "context", "artifacts", "digests", "assets", "progress", "store", "__init__"}
# The pipeline orchestrates every stage, so like the CLI it sits above them all (evidence
# collects what it built, reproduce rebuilds through it).
TOP = {"cli", "commands", "pipeline", "evidence", "reproduce", "system", "doctor", "cachecare", "__main__"}
# The loader's guest entry point runs as /init in a QEMU host: its markers on the console are its output.
PRINTS_BY_DESIGN = {Path("loader/__main__.py")}


def imported_mkimage_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mkimage"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mkimage"))
    return {m.split(".")[1] if "." in m else "__init__" for m in found}


def stage_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_flow_one_way(path: Path) -> None:
    stage = stage_of(path)
    if stage in TOP:
        return
    targets = imported_mkimage_modules(path) - {stage}
    if stage in SHARED:
        assert targets <= SHARED, f"shared module {path.name} imports stages {targets - SHARED}"
        return
    assert stage in STAGES, f"{stage} is neither a stage nor a shared module"
    allowed = SHARED | set(STAGES[: STAGES.index(stage)])
    assert targets <= allowed, f"{stage} imports later stages or the CLI: {sorted(targets - allowed)}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_library_code_neither_prints_nor_exits(path: Path) -> None:
    if stage_of(path) in TOP or path.relative_to(PACKAGE) in PRINTS_BY_DESIGN:
        return
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            assert name not in {"print", "sys.exit", "exit", "os.system"}, f"{path.name}:{node.lineno}: {name}()"
            for kw in node.keywords:
                assert not (kw.arg == "shell" and ast.unparse(kw.value) == "True"), f"{path.name}:{node.lineno}"


def test_no_mkimage_console_script() -> None:
    text = (PACKAGE.parent / "pyproject.toml").read_text()
    assert 'mkspawn = "mkimage.cli:main"' in text
    assert "\nmkimage =" not in text
