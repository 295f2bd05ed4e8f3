"""`mkspawn check DIR`: a system is verified whole before anything boots, then every
spawn boots on a QEMU host of its own (slow: the demo system's compiled kernel, a cache
hit once any test or setup.sh built it, and three TCG boots)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import run_mkspawn as mkspawn
from tests.system.test_system_build import KEY, KEYS, write_system

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_trust(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("trust")
    shutil.copy(KEYS / "test-ed25519.pub.pem", d)
    return d


@pytest.fixture(scope="session")
def demo_system(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """recipes/system-demo.toml built once per session, signed by the test key."""
    out = tmp_path_factory.mktemp("demo-system") / "system"
    done = mkspawn("build", REPO / "recipes" / "system-demo.toml", "-o", out, "--key", KEY)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "untrusted"])
def test_a_system_that_fails_verification_is_refused_before_any_boot(
        tmp_path: Path, synthetic_kernel: Path, signed: bool) -> None:
    """The host kernel named does not exist: reaching the host (or a boot) would be exit 2
    naming it, so exit 3 with the verify code shows the refusal came first."""
    system = write_system(tmp_path / "src", synthetic_kernel)
    out = tmp_path / "out"
    assert mkspawn("build", system, "-o", out, *(["--key", KEY] if signed else [])).returncode == 0
    empty_trust = tmp_path / "trust"
    empty_trust.mkdir()
    logs = tmp_path / "logs"
    done = mkspawn("check", out, "--trust", empty_trust, "--host-kernel", tmp_path / "no-such-host",
                   "--log-dir", logs)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().endswith("[untrusted-key]" if signed else "[unsigned]")
    assert done.stdout == "" and not logs.exists()


def test_static_refuses_a_system(tmp_path: Path, synthetic_kernel: Path) -> None:
    system = write_system(tmp_path / "src", synthetic_kernel)
    assert mkspawn("build", system, "-o", tmp_path / "out", "--key", KEY).returncode == 0
    done = mkspawn("check", "--static", tmp_path / "out")
    assert done.returncode == 2 and done.stderr.strip().endswith("[usage]")


@pytest.mark.slow
def test_check_boots_every_spawn_of_the_demo_system(demo_system: Path, demo_trust: Path, tmp_path: Path) -> None:
    done = mkspawn("check", demo_system, "--trust", demo_trust, "--json", "--log-dir", tmp_path / "logs")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["mode"] == "kexec"
    spawns = report["spawns"]
    assert [s["instance"] for s in spawns] == ["net", "store", "calc"]
    for s in spawns:
        assert s["ok"] and s["outcome"] == "passed" and s["nonce_seen"], s
        assert s["stage_reached"] == "spawn-userspace", s
        assert s["console_log"] == str(tmp_path / "logs" / s["instance"] / "console.log")
    assert len({s["nonce"] for s in spawns}) == 3  # one run each, not one boot reported thrice


@pytest.mark.slow
def test_multikernel_check_stages_every_spawn_on_one_stock_host(demo_system: Path, demo_trust: Path,
                                                                 tmp_path: Path) -> None:
    """One QEMU host for the whole system: its loader gets the system's tree and all three
    spawns, and the tiny host (recipes/qemu-host.toml, a stock kernel) gives the
    single-bundle check's diagnosis, for every spawn, from that one boot."""
    logs = tmp_path / "logs"
    done = mkspawn("check", demo_system, "--trust", demo_trust, "--mode", "multikernel", "--log-dir", logs)
    assert done.returncode == 4, done.stderr
    line = done.stderr.strip().splitlines()[-1]
    assert "3 of 3 spawns failed the multikernel check (net, store, calc)" in line
    assert "host kernel lacks multikernel support" in line and line.endswith("[check-unsupported-host]")
    assert "all on one QEMU host" in done.stdout.splitlines()[0]
    rows = {r.split()[0]: r for r in done.stdout.splitlines()[2:5]}
    assert all("unsupported-host" in rows[name] for name in ("net", "store", "calc")), rows
    assert [p.name for p in logs.iterdir()] == ["console.log"]  # one boot
    console = (logs / "console.log").read_text(errors="replace")
    assert "MKSPAWN-LOADER-START mode=system" in console and "spawns=3" in console
    assert "MKSPAWN-UNSUPPORTED host kernel lacks multikernel support" in console
