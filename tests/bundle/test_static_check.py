"""`mkspawn check --static` on bundles and bare images, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_mkspawn as mkspawn

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"



def test_debian_kernel_passes_with_release(debian_kernel: Path) -> None:
    done = mkspawn("check", "--static", debian_kernel, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] and result["kind"] == "bzimage"
    assert debian_kernel.name == f"vmlinuz-{result['release']}"


def test_bundle_is_checked_with_its_own_profile_and_cmdline(tmp_path: Path, synthetic_kernel: Path) -> None:
    (tmp_path / "r.toml").write_text(f"""
[metadata]
name = "c"
version = "1"
[kernel]
image = "{synthetic_kernel}"
cmdline = "console=ttyS0"
""")
    bundle = tmp_path / "c.mkb"
    assert mkspawn("build", tmp_path / "r.toml", "-o", bundle).returncode == 0
    done = mkspawn("check", "--static", bundle, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["component"] == "bzImage" and result["abi_profile"] == "none"
    assert any(r["name"] == "cmdline-size" and r["passed"] for r in result["rules"])
    too_long = mkspawn("check", "--static", bundle, "--cmdline", "x" * 2030)
    assert too_long.returncode == 3 and "cmdline-size" in too_long.stderr


def test_non_kernel_elf_fails_the_mk2_note_rule() -> None:
    done = mkspawn("check", "--static", "/bin/true", "--profile", "mk2")
    assert done.returncode == 3
    assert "FAIL  mk-note" in done.stdout
    assert done.stderr.strip() == "mkspawn: error: /bin/true: fails the mk2 loader contract: mk-note [contract-failed]"
