"""The style guide's mechanical part: ruff and mypy --strict over the package, as tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import missing

REPO = Path(__file__).resolve().parents[1]


def _module_available(name: str) -> bool:
    done = subprocess.run([sys.executable, "-m", name, "--version"], capture_output=True, cwd=REPO)
    return done.returncode == 0


@pytest.mark.parametrize("argv", [["ruff", "check", "."], ["mypy"]], ids=["ruff", "mypy-strict"])
def test_clean(argv: list[str]) -> None:
    if not _module_available(argv[0]):
        missing(f"{argv[0]} is not installed (pip install -e '.[test]')")
    done = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
