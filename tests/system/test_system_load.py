"""Loading a whole system: `mkspawn load DIR` applies the system's tree, then creates,
loads and starts every instance in the manifest's order (mkimage/loader/system.py, the
sequence the multikernel check's QEMU host runs too).  No multikernel kernel can run
here, so the protocol is driven against the STAND-IN hosts (tests/loader/kernfs_double.py,
kernfs_double_v2.py) with bundles and trees our build made; on this machine's real,
stock kernel the CLI must say it has no multikernel support."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mkimage.loader import __main__ as loader_main
from mkimage.loader.system import SpawnRefused
from mkimage.qemu import hostfs
from mkimage.qemu.console import Outcome, Stage, parse_log
from mkimage.qemu.system import HostConsoleParser, lines_of
from mkimage.signing.trust import load_trust_store
from mkimage.system import _system_tree, load_system, verify_system
from tests.bundle.test_build_verify import mk_bzimage
from tests.conftest import BzImageFactory, needs_tool
from tests.conftest import run_mkspawn as mkspawn
from tests.loader.kernfs_double import Instance, MultikernelHostDouble
from tests.loader.kernfs_double_v2 import V2HostDouble
from tests.system.test_system_build import KEY, KEYS, write_system

SYSTEM = """
[system]
name = "edge"
version = "1.0.0"
profile = "mk-master"

[pool]
cpus = [2, 3, 4, 5]
memory = [{ size_bytes = 0x40000000, numa_node = 0 }]
devices = { nic0 = { pci = "0000:09:00.0", vendor_id = 0x1af4, device_id = 0x1041 } }

[[spawns]]
recipe = "spawn.toml"
name = "net"
id = 4
cpus = [2, 3]
memory_bytes = 0x10000000
devices = ["nic0"]

[[spawns]]
recipe = "other.toml"
name = "calc"
id = 5
cpu_count = 2
memory_bytes = 0x8000000
"""


@pytest.fixture
def system_dir(tmp_path: Path, make_bzimage: BzImageFactory, make_elf: Callable[..., bytes]) -> Path:
    needs_tool("dtc")
    kernel = tmp_path / "mk-bzImage"
    kernel.write_bytes(mk_bzimage(make_bzimage, make_elf))
    system = write_system(tmp_path / "src", kernel, SYSTEM)
    out = tmp_path / "out"
    done = mkspawn("build", system, "-o", out, "--key", KEY)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture
def host() -> Iterator[MultikernelHostDouble]:
    double = MultikernelHostDouble()
    yield double
    double.close()


@pytest.fixture
def trust(tmp_path: Path) -> Path:
    d = tmp_path / "trust"
    d.mkdir()
    shutil.copy(KEYS / "test-ed25519.pub.pem", d)
    return d


def test_baseline_then_every_instance_in_order(system_dir: Path, trust: Path, host: MultikernelHostDouble) -> None:
    lines: list[str] = []
    started = load_system(system_dir, load_trust_store(trust, must_exist=True),
                          lambda instance, stage, detail: lines.append(f"{instance}/{stage}: {detail}"), host=host)
    assert started == ["net", "calc"]
    assert host.baseline == (system_dir / "baseline.dtb").read_bytes()
    assert {name: (i.id, i.status) for name, i in host.instances.items()} == \
        {"net": (4, "active"), "calc": (5, "active")}
    assert lines[:2] == ["/mounted: /sys/fs/multikernel", "/baseline: written"]
    assert [line.split(":")[0] for line in lines[2:]] == \
        ["net/overlay", "net/loaded", "net/started", "calc/overlay", "calc/loaded", "calc/started"]
    starts = [c for c in host.calls if c.startswith(("kexec_file_load", "reboot"))]
    assert starts == ["kexec_file_load 0x90", "reboot 0x4d4b4c49 4", "kexec_file_load 0xb0", "reboot 0x4d4b4c49 5"]


def test_a_refused_spawn_is_taken_back_and_the_earlier_ones_keep_running(
        system_dir: Path, trust: Path, host: MultikernelHostDouble) -> None:
    host.instances["calc"] = Instance(id=9)  # somebody else's instance of that name
    lines: list[str] = []
    with pytest.raises(SpawnRefused) as caught:
        load_system(system_dir, load_trust_store(trust, must_exist=True),
                    lambda instance, stage, detail: lines.append(f"{instance}/{stage}: {detail}"), host=host)
    assert caught.value.name == "EEXIST" and caught.value.instance == "calc"
    assert host.instances["net"].status == "active" and host.instances["calc"] == Instance(id=9)


def test_load_on_this_stock_kernel_says_so(system_dir: Path, trust: Path) -> None:
    done = mkspawn("load", system_dir, "--trust", trust)
    assert done.returncode == 4, done.stderr
    assert done.stderr.splitlines() == [
        f"mkspawn: error: {system_dir}: host kernel lacks multikernel support: no 'multikernel' filesystem in "
        "/proc/filesystems (KEXEC_MULTIKERNEL is not sent to it) [unsupported-host]"]


def test_a_v2_system_writes_one_tree_then_loads_every_instance(tmp_path: Path, synthetic_kernel: Path,
                                                               trust: Path) -> None:
    """Regression: v2 systems were refused (EOPNOTSUPP, "no overlays"), though a v2 host
    takes several instances from one tree (multikernel-abi.md §7.1).  The system's tree
    names every instance; then each is loaded and started in order, no overlay written."""
    out = tmp_path / "out"
    assert mkspawn("build", write_system(tmp_path / "src", synthetic_kernel), "-o", out, "--key", KEY).returncode == 0
    host = V2HostDouble()
    lines: list[str] = []
    started = load_system(out, load_trust_store(trust, must_exist=True),
                          lambda instance, stage, detail: lines.append(f"{instance}/{stage}: {detail}"), host=host)
    assert started == ["net", "store", "calc"]
    assert host.baseline == (out / "baseline.dtb").read_bytes()
    assert {name: (i.id, i.status) for name, i in host.instances.items()} == \
        {"net": (1, "active"), "store": (2, "active"), "calc": (3, "active")}
    assert [c.split()[0] for c in host.calls] == ["write"] + ["kexec_file_load", "reboot"] * 3
    assert "net/loaded: id=1 status=loading" in lines


def test_a_refused_v2_load_names_the_instance(tmp_path: Path, synthetic_kernel: Path, trust: Path) -> None:
    out = tmp_path / "out"
    assert mkspawn("build", write_system(tmp_path / "src", synthetic_kernel), "-o", out, "--key", KEY).returncode == 0
    host = V2HostDouble()
    host.baseline = b"somebody else's"  # device_tree answers EBUSY: the tree stays theirs
    host.instances["net"] = Instance(id=1)
    host.instances["store"] = Instance(id=2, status="loading")  # already holds an image
    with pytest.raises(SpawnRefused) as caught:
        load_system(out, load_trust_store(trust, must_exist=True), lambda *_: None, host=host)
    assert (caught.value.instance, caught.value.op, caught.value.name) == ("store", "kexec_file_load", "EBUSY")
    assert host.instances["net"].status == "active" and host.instances["store"].status == "loading"


def _guest_console(system_dir: Path, trust: Path, host: MultikernelHostDouble, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> list[str]:
    """What the check's QEMU host prints: the system staged as the check stages it, run by
    the loader's own system mode (argument parsing, spawn directories, tagging) against
    the stand-in, whose spawns print this run's nonce on their consoles."""
    checked = verify_system(system_dir, load_trust_store(trust, must_exist=True))
    tree, payloads = _system_tree(checked, tmp_path / "extracted")
    staged = [hostfs.SystemSpawnPayload(name, mk_id, payload, NONCE) for name, mk_id, payload in payloads]
    guest = tmp_path / "payload"
    args = hostfs.stage_system(tree, staged, ["system", "--profile", "mk-master", "--timeout", "2"], guest,
                               console="mktty0")
    _, values, lists, _ = loader_main.parse([a.replace("/mkspawn", str(guest)) for a in args])
    host.spawn_console = ["Linux version 6.12.0-spawn", f"MKSPAWN-NONCE={NONCE}"]
    print("Linux version 6.12.0-host")
    loader_main.run_system(values, lists, host)
    return capsys.readouterr().out.splitlines()


NONCE = "0123456789abcdef"


def test_the_check_judges_each_spawn_of_one_host_on_its_own_lines(
        system_dir: Path, trust: Path, host: MultikernelHostDouble, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    console = _guest_console(system_dir, trust, host, tmp_path, capsys)
    assert {name: i.status for name, i in host.instances.items()} == {"net": "active", "calc": "active"}
    for name in ("net", "calc"):
        own, reached = lines_of(console, name)
        parser = parse_log(own, NONCE)
        assert reached and parser.outcome(timed_out=False) is Outcome.PASSED, own
        assert parser.reached is Stage.SPAWN_USERSPACE
    # The live verdict waits for the host's loader: no spawn's line ends the boot.
    live = HostConsoleParser(nonce=None)
    assert not any(live.feed(line) for line in console)
    assert live.feed("MKSPAWN-LOADER-END rc=0")


def test_a_refused_spawn_fails_alone_in_the_one_host_check(
        system_dir: Path, trust: Path, host: MultikernelHostDouble, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    host.instances["calc"] = Instance(id=9)  # somebody else's instance of that name
    console = _guest_console(system_dir, trust, host, tmp_path, capsys)
    net = parse_log(lines_of(console, "net")[0], NONCE)
    calc = parse_log(lines_of(console, "calc")[0], NONCE)
    assert net.outcome(timed_out=False) is Outcome.PASSED
    assert calc.outcome(timed_out=False) is Outcome.LOAD_REFUSED
    assert calc.errno is not None and (calc.errno.name, calc.errno.op) == ("EEXIST", "write-overlay")
