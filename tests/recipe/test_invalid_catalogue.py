"""The failing-recipe catalogue (meson style): each file states its one expected error line.

Every case runs the real CLI in a subprocess and checks: exit status 2, exactly that
line on stderr, nothing on stdout, and no traceback.  A case is loaded with
`recipe show`, or, when its second line is `# verb: initramfs`, built with
`mkspawn initramfs CASE -o OUT` (for problems only the build meets: host files and
how the entries fit together); no output file may be left behind.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

INVALID_DIR = Path(__file__).parent / "invalid"
ERROR_PREFIX = b"# error: "
VERB_PREFIX = b"# verb: "


def _header(case: Path) -> list[bytes]:
    # Bytes, not text: one case is deliberately not UTF-8 after its header.
    return case.read_bytes().splitlines()[:2]


CASES = sorted(p for p in INVALID_DIR.glob("*.toml") if _header(p)[0].startswith(ERROR_PREFIX))


def expected_line(case: Path) -> str:
    return _header(case)[0].removeprefix(ERROR_PREFIX).decode("utf-8")


def verb_argv(case: Path, out: Path) -> list[str]:
    header = _header(case)
    verb = header[1].removeprefix(VERB_PREFIX).decode() if header[1:] and header[1].startswith(VERB_PREFIX) \
        else "recipe show"
    assert verb in ("recipe show", "initramfs"), f"{case.name}: unknown verb {verb!r}"
    return ["recipe", "show", case.name] if verb == "recipe show" else ["initramfs", case.name, "-o", str(out)]


def test_catalogue_is_large() -> None:
    assert len(CASES) >= 30


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_invalid_recipe(case: Path, tmp_path: Path) -> None:
    out = tmp_path / "initrd.img"
    done = subprocess.run(
        [sys.executable, "-m", "mkimage", *verb_argv(case, out)],
        cwd=INVALID_DIR, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(INVALID_DIR)},
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [f"mkspawn: error: {expected_line(case)}"]
    assert list(tmp_path.iterdir()) == []
