"""The same recipe built from two checkouts, by two users, gives the same bundle.

Each build runs mkspawn from its own copy of the package (so the default init script and
every other packaged file live under a different path), with its own HOME, cache, TMPDIR,
umask and locale.  No host path of the checkout, home, cache or temp directory may reach
the bundle; everything else is already pinned by the recipe's epoch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, needs_tool

EPOCH = 1_700_000_000
RECIPE = f"""
[metadata]
name = "portable"
version = "1.0.0"
source_date_epoch = {EPOCH}
[kernel]
image = "bzImage"
config = "config"
cmdline = "console=ttyS0"
[initramfs]
command = "echo portable"
[acpi]
tables = ["t.asl"]
"""
CONFIG = "CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\nCONFIG_ACPI=y\nCONFIG_ACPI_TABLE_UPGRADE=y\n"
ASL = 'DefinitionBlock ("", "SSDT", 2, "MKSPWN", "PORTABL", 1)\n{\n    Name (MKSP, 1)\n}\n'


def _checkout(root: Path) -> Path:
    """A copy of what running mkspawn from a checkout needs: the package and its data."""
    checkout = root / "mkspawn"
    for part in ("mkimage", "initramfs"):
        shutil.copytree(REPO / part, checkout / part, ignore=shutil.ignore_patterns("__pycache__"))
    return checkout


def _build(root: Path, synthetic_kernel: Path, *, umask: int, locale: str) -> tuple[bytes, list[str]]:
    checkout = _checkout(root)
    home, cache, tmp, work = root / "home", root / "cache", root / "tmp", root / "work" / "recipe"
    for d in (home, cache, tmp, work):
        d.mkdir(parents=True)
    shutil.copy(synthetic_kernel, work / "bzImage")
    (work / "t.asl").write_text(ASL)
    (work / "config").write_text(CONFIG)
    (work / "spawn.toml").write_text(RECIPE)
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "XDG_CACHE_HOME": str(cache),
           "XDG_CONFIG_HOME": str(home / ".config"), "TMPDIR": str(tmp), "LC_ALL": locale,
           "PYTHONPATH": str(checkout), "PYTHONDONTWRITEBYTECODE": "1"}
    probe = subprocess.run([sys.executable, "-c", "import mkimage; print(mkimage.__file__)"], env=env,
                           capture_output=True, text=True, check=True, cwd=checkout)
    assert Path(probe.stdout.strip()).is_relative_to(checkout), "the copy, not the installed package, runs"
    out = root / "portable.mkb"
    done = subprocess.run([sys.executable, "-m", "mkimage", "build", work / "spawn.toml", "-o", out], env=env,
                          capture_output=True, text=True, cwd=checkout, timeout=600,
                          preexec_fn=lambda: os.umask(umask) and None)
    assert done.returncode == 0, done.stderr
    return out.read_bytes(), [str(p) for p in (checkout, home, cache, tmp, root)]


def test_two_checkouts_two_users_build_the_same_bundle(tmp_path: Path, synthetic_kernel: Path) -> None:
    needs_tool("busybox", "iasl")
    one, one_paths = _build(tmp_path / "a", synthetic_kernel, umask=0o022, locale="C.UTF-8")
    two, two_paths = _build(tmp_path / "second-user" / "deeper", synthetic_kernel, umask=0o077, locale="C")
    leaks = [p for p in one_paths + two_paths if p.encode() in one or p.encode() in two]
    assert leaks == []
    assert str(tmp_path).encode() not in one and b"/tmp/" not in one
    assert one == two
