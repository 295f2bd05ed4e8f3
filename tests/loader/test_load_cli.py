"""`mkspawn load` on this build machine, limited to paths that load nothing: an
unverifiable bundle is refused before any syscall, and multikernel mode on a stock
kernel stops at the missing multikernel filesystem.  (Plain kexec mode would stage a
kernel on the machine running the tests; it is exercised inside QEMU instead.)"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mkimage.loader.multikernel import has_filesystem
from tests.conftest import missing
from tests.conftest import run_mkspawn as mkspawn
from tests.qemu.conftest import KEYS, make_bundle


@pytest.fixture
def bundle(tmp_path: Path, synthetic_kernel: Path) -> Path:
    (tmp_path / "initrd").write_bytes(b"070701" + b"0" * 104)
    return make_bundle(tmp_path / "b", synthetic_kernel, tmp_path / "initrd")


def test_untrusted_bundle_is_never_loaded(tmp_path: Path, bundle: Path) -> None:
    other = tmp_path / "trust"
    other.mkdir()
    shutil.copy(KEYS / "other-ed25519.pub.pem", other)
    done = mkspawn("load", bundle, "--trust", other, "--exec")
    assert done.returncode == 3 and "[untrusted-key]" in done.stderr


def test_multikernel_load_on_a_stock_kernel_says_so(tmp_path: Path, bundle: Path) -> None:
    if has_filesystem():
        # A safety guard, not a missing tool: still a failure under CI=true, never a silent pass.
        missing("this machine runs a multikernel kernel; not loading anything on it")
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(KEYS / "test-ed25519.pub.pem", trust)
    done = mkspawn("load", bundle, "--trust", trust, "--mode", "multikernel", "--name", "demo")
    assert done.returncode == 4, done.stderr
    (line,) = done.stderr.splitlines()
    assert "host kernel lacks multikernel support" in line and line.endswith("[unsupported-host]")
