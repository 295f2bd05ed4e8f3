"""The failing-recipe catalogue (meson style): each file states its one expected error line.

Every case runs the real CLI in a subprocess and checks: exit status 2, exactly that
line on stderr, nothing on stdout, and no traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

INVALID_DIR = Path(__file__).parent / "invalid"
CASES = sorted(p for p in INVALID_DIR.glob("*.toml") if p.read_text().startswith("# error: "))


def expected_line(case: Path) -> str:
    return case.read_text().splitlines()[0].removeprefix("# error: ")


def test_catalogue_is_large() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_invalid_recipe(case: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkimage", "recipe", "show", case.name],
        cwd=INVALID_DIR, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(INVALID_DIR)},
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"mkspawn: error: {expected_line(case)}"]
