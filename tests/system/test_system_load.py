"""Loading a whole system: `mkspawn load DIR` applies the pool baseline, then creates,
loads and starts every instance in the manifest's order.  No multikernel kernel can run
here, so the protocol is driven against the STAND-IN host (tests/loader/kernfs_double.py)
with bundles and a baseline our build made; on this machine's real, stock kernel the
CLI must say it has no multikernel support."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mkimage.loader.errnos import LoaderError
from mkimage.signing.trust import load_trust_store
from mkimage.system import load_system
from tests.bundle.test_build_verify import mk_bzimage
from tests.conftest import BzImageFactory, needs_tool
from tests.conftest import run_mkspawn as mkspawn
from tests.loader.kernfs_double import Instance, MultikernelHostDouble
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
                          lambda stage, detail: lines.append(f"{stage}: {detail}"), host=host)
    assert started == ["net", "calc"]
    assert host.baseline == (system_dir / "baseline.dtb").read_bytes()
    assert {name: (i.id, i.status) for name, i in host.instances.items()} == \
        {"net": (4, "active"), "calc": (5, "active")}
    assert lines[:2] == ["mounted: /sys/fs/multikernel", "baseline: written"]
    assert [line.split(":")[0] for line in lines[2:]] == ["overlay", "loaded", "started"] * 2
    assert lines[2].endswith("instance=net") and lines[5].endswith("instance=calc")
    starts = [c for c in host.calls if c.startswith(("kexec_file_load", "reboot"))]
    assert starts == ["kexec_file_load 0x90", "reboot 0x4d4b4c49 4", "kexec_file_load 0xb0", "reboot 0x4d4b4c49 5"]


def test_a_refused_spawn_is_taken_back_and_the_earlier_ones_keep_running(
        system_dir: Path, trust: Path, host: MultikernelHostDouble) -> None:
    host.instances["calc"] = Instance(id=9)  # somebody else's instance of that name
    lines: list[str] = []
    with pytest.raises(LoaderError) as caught:
        load_system(system_dir, load_trust_store(trust, must_exist=True),
                    lambda stage, detail: lines.append(f"{stage}: {detail}"), host=host)
    assert caught.value.name == "EEXIST"
    assert host.instances["net"].status == "active" and host.instances["calc"] == Instance(id=9)


def test_load_on_this_stock_kernel_says_so(system_dir: Path, trust: Path) -> None:
    done = mkspawn("load", system_dir, "--trust", trust)
    assert done.returncode == 4, done.stderr
    assert done.stderr.splitlines() == [
        f"mkspawn: error: {system_dir}: host kernel lacks multikernel support: no 'multikernel' filesystem in "
        "/proc/filesystems (KEXEC_MULTIKERNEL is not sent to it) [unsupported-host]"]


def test_a_v2_system_is_refused_by_the_loader(tmp_path: Path, synthetic_kernel: Path, trust: Path,
                                              host: MultikernelHostDouble) -> None:
    out = tmp_path / "out"
    assert mkspawn("build", write_system(tmp_path / "src", synthetic_kernel), "-o", out, "--key", KEY).returncode == 0
    with pytest.raises(LoaderError) as caught:
        load_system(out, load_trust_store(trust, must_exist=True), lambda stage, detail: None, host=host)
    assert caught.value.errno == errno.EOPNOTSUPP and host.baseline is None
