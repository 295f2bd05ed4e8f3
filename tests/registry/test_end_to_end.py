"""build → push → pull on "another machine" (fresh trust dir, cache and config) → cmp →
`mkspawn check` boots the pulled bundle under QEMU."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_mkspawn as mkspawn
from tests.qemu.conftest import minimal_bundle, minimal_kernel, no_stray_qemu, qemu, spawn_initrd  # noqa: F401
from tests.registry.conftest import Registry

pytestmark = pytest.mark.slow


def test_pulled_bundle_is_identical_and_boots(tmp_path: Path, plain_registry: Registry, minimal_bundle: Path,  # noqa: F811
                                              debian_kernel: Path, trust: Path, no_stray_qemu: Path) -> None:  # noqa: F811
    ref = f"{plain_registry.host}/e2e/minimal:1.0.0"
    done = mkspawn("push", minimal_bundle, ref, "--insecure")
    assert done.returncode == 0, done.stderr
    digest = done.stdout.strip()
    other = {"XDG_CACHE_HOME": str(tmp_path / "other-cache"), "HOME": str(tmp_path / "other-home")}
    out = tmp_path / "other-machine" / "spawn.mkb"
    done = mkspawn("pull", f"{plain_registry.host}/e2e/minimal@{digest}", "-o", out, "--trust", trust,
                   "--insecure", env=other)
    assert done.returncode == 0, done.stderr
    assert subprocess.run(["cmp", minimal_bundle, out]).returncode == 0
    done = mkspawn("check", out, "--host-kernel", debian_kernel, "--trust", trust, "--expect", "spawn-says-hello",
                   "--timeout", "60", "--log-dir", no_stray_qemu, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["outcome"] == "passed"
