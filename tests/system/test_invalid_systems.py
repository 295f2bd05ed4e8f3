"""The failing-system catalogue: each file states its one expected error line (meson
style, as tests/recipe/invalid does for recipes), plus `# args: …` for extra options.

Every case runs `mkspawn build CASE -o OUT` in a subprocess: the conflict must be refused
before anything is built, so the status is 2, stderr is exactly that line, stdout is
empty, and neither OUT nor a temp directory beside it is left behind.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mkimage.recipe.system import load_system
from tests.recipe.test_invalid_catalogue import expected_line

INVALID_DIR = Path(__file__).parent / "invalid"
ARGS_PREFIX = "# args: "
CASES = sorted(INVALID_DIR.glob("*.toml"))
# One case per conflict rule of issue 14, at least.
RULE_CODES = {"cpu-conflict", "cpu-outside-pool", "smt-split", "memory-overcommit", "memory-fragmented",
              "device-conflict", "unknown-device", "duplicate-instance", "profile-mismatch"}


def extra_args(case: Path) -> list[str]:
    second = case.read_text(encoding="utf-8").splitlines()[1]
    return second.removeprefix(ARGS_PREFIX).split() if second.startswith(ARGS_PREFIX) else []


def test_catalogue_covers_every_conflict_rule() -> None:
    codes = {expected_line(case).rsplit("[", 1)[1].rstrip("]") for case in CASES}
    assert codes >= RULE_CODES, RULE_CODES - codes
    assert any("APIC id 0" in expected_line(case) for case in CASES)
    assert any("expected 1..2047, got 2048" in expected_line(case) for case in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_invalid_system(case: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "mkimage", "build", case.name, "-o", str(out), *extra_args(case)],
        cwd=INVALID_DIR, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(INVALID_DIR)},
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"mkspawn: error: {expected_line(case)}"]
    assert list(tmp_path.iterdir()) == []


def test_conflict_lines_name_both_places() -> None:
    """Every cross-instance refusal points at one line and names the other."""
    for case in CASES:
        line = expected_line(case)
        code = line.rsplit("[", 1)[1].rstrip("]")
        if code in RULE_CODES:
            assert line.count(".toml:") == 2, line


def test_split_siblings_are_a_warning_without_strict(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(INVALID_DIR)
    system = load_system(INVALID_DIR / "smt-split-strict.toml")
    assert system.warnings == ("smt-split-strict.toml:17: spawn 'a': APIC id 2 shares a core with APIC id 3 of "
                               "spawn 'b' at smt-split-strict.toml:24; keep SMT siblings in one instance",)
    assert [s.instance.cpus for s in system.spawns] == [[2], [3, 4, 5]]
