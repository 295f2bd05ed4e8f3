"""`mkspawn check` for real: QEMU under TCG, mkspawn's own loader in the host, the
kernel's own kexec_file_load deciding.  Each boot stays around 5–10 s."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mkimage.initramfs.build import build_initramfs
from mkimage.qemu.check import CheckOptions, HostKernel, Mode, check_payload
from mkimage.qemu.console import Outcome, Stage
from mkimage.qemu.hostfs import SpawnPayload
from mkimage.recipe.model import InitramfsSpec
from tests.conftest import run_mkspawn as mkspawn
from tests.conftest import without_progress
from tests.qemu.conftest import EPOCH, cache_root, make_bundle, qemu_processes

pytestmark = pytest.mark.slow



def test_debian_host_boots_the_minimal_spawn_and_sees_the_nonce(
        debian_kernel: Path, minimal_bundle: Path, trust_dir: Path, no_stray_qemu: Path) -> None:
    done = mkspawn("check", minimal_bundle, "--host-kernel", debian_kernel, "--trust", trust_dir,
                   "--expect", "spawn-says-hello", "--timeout", "60", "--log-dir", no_stray_qemu, "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["ok"] and result["mode"] == "kexec" and result["outcome"] == "passed"
    assert result["nonce_seen"] and result["expect_matched"] and result["errno"] is None
    stages = [s["stage"] for s in result["stages"]]
    assert stages == [str(s) for s in Stage]
    times = [s["t_s"] for s in result["stages"]]
    assert times == sorted(times)
    log = (no_stray_qemu / "console.log").read_text()
    # The evidence is the kernels' own words, in order: load, jump, a second banner, the nonce.
    assert log.index("MKSPAWN-LOAD-OK") < log.index("kexec_core: Starting new kernel") \
        < log.index("mkspawn: spawn kernel built by mkspawn") < log.index(f"MKSPAWN-NONCE={result['nonce']}")


def test_self_built_host_accepts_a_debian_kernel_as_spawn(
        tmp_path: Path, tiny_host: HostKernel, debian_kernel: Path, spawn_initrd: Path, trust_dir: Path,
        no_stray_qemu: Path) -> None:
    bundle = make_bundle(tmp_path / "b", debian_kernel, spawn_initrd, "console=ttyS0 panic=-1 quiet")
    done = mkspawn("check", bundle, "--host-recipe", Path("recipes/qemu-host.toml").resolve(), "--trust", trust_dir,
                   "--timeout", "60", "--log-dir", no_stray_qemu)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[0].endswith(": kexec check on host image: passed")
    assert "reached spawn-userspace" in done.stdout and "seen" in done.stdout


def test_a_non_kernel_file_is_refused_with_enoexec(tmp_path: Path, tiny_host: HostKernel,
                                                   no_stray_qemu: Path) -> None:
    not_a_kernel = tmp_path / "random.bin"
    not_a_kernel.write_bytes(os.urandom(8192))
    result = check_payload(SpawnPayload(not_a_kernel, None, "console=ttyS0"), tiny_host,
                           CheckOptions(timeout_s=60, log_dir=no_stray_qemu), cache_root=cache_root())
    assert result.outcome is Outcome.LOAD_REFUSED
    assert result.reached is Stage.LOADER
    assert result.errno is not None and (result.errno.name, result.errno.number) == ("ENOEXEC", 8)
    assert result.errno.kind == "format" and "bad format" in result.errno.meaning
    assert not result.nonce_seen
    assert "ENOEXEC" in result.summary() and "bad format" in result.summary()


def test_multikernel_mode_on_a_stock_host_says_it_lacks_multikernel_support(
        minimal_bundle: Path, tiny_host: HostKernel, trust_dir: Path, no_stray_qemu: Path) -> None:
    done = mkspawn("check", minimal_bundle, "--mode", "multikernel", "--host-kernel", tiny_host.image,
                   "--trust", trust_dir, "--timeout", "60", "--log-dir", no_stray_qemu)
    assert done.returncode == 4, done.stdout + done.stderr
    (line,) = without_progress(done.stderr)
    assert "host kernel lacks multikernel support" in line and "[check-unsupported-host]" in line
    assert "no 'multikernel' filesystem" in line


def test_a_hung_spawn_times_out_and_leaves_no_qemu_behind(
        tmp_path: Path, tiny_host: HostKernel, minimal_kernel: Path, no_stray_qemu: Path) -> None:
    silent = tmp_path / "silent-init"
    silent.write_text("#!/bin/sh\n# an init that never prints and never ends\nexec sleep 100000\n")
    silent.chmod(0o755)
    initrd = tmp_path / "hung.img"
    build_initramfs(InitramfsSpec(init=silent), initrd, source_date_epoch=EPOCH)
    payload = SpawnPayload(minimal_kernel, initrd, "console=ttyS0 panic=-1")
    result = check_payload(payload, tiny_host, CheckOptions(timeout_s=15, log_dir=no_stray_qemu,
                                                            expect="never-printed"),
                           cache_root=cache_root())
    assert result.outcome is Outcome.TIMEOUT
    assert result.nonce_seen  # the probe ran; the bundle's init then hung
    assert result.reached is Stage.SPAWN_USERSPACE
    assert "no verdict within 15s" in result.summary()
    assert qemu_processes(str(no_stray_qemu)) == []


def test_check_mode_enum_round_trips() -> None:
    assert [Mode(m.value) for m in Mode] == list(Mode)
