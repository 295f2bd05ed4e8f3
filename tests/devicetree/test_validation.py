"""Each [instance]/[devicetree]/[acpi] rule, with the one line the user sees."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from mkimage.errors import RecipeError
from mkimage.recipe.load import load_recipe
from tests.devicetree.dt_helpers import recipe_text, write_recipe

MK2 = recipe_text("mk2")
V2 = recipe_text("v2")
POOL_MK2 = 'pool_memory = [{ size_bytes = 0x20000000, numa_node = 0 }]\n'

# (case id, recipe body after the header, text on the reported line, expected message)
CASES = [
    ("apic-0", MK2.replace("cpus = [2]", "cpus = [0, 2]"), "cpus = [0, 2]",
     "[instance] cpus: APIC id 0 is the boot CPU [bad-value]"),
    ("duplicate-cpu", MK2.replace("cpus = [2]", "cpus = [2, 3, 2]"), "cpus = [2, 3, 2]",
     "[instance] cpus: APIC id 2 is listed twice [bad-value]"),
    ("pool-apic-0", MK2.replace("pool_cpus = [2, 3]", "pool_cpus = [0, 2, 3]"), "pool_cpus",
     "[devicetree] pool_cpus: APIC id 0 is the boot CPU [bad-value]"),
    ("memory-unaligned", MK2.replace("0x10000000", "0x10000800"), "memory_bytes",
     "[instance] memory_bytes: 0x10000800 is not a multiple of the 4096-byte page [bad-value]"),
    ("base-unaligned", MK2 + "", "", ""),  # replaced below (needs [instance] placement)
    ("memory-over-pool", MK2.replace("0x10000000", "0x40000000"), "memory_bytes",
     "[instance] memory_bytes: 0x40000000 bytes is larger than the largest pool chunk (0x20000000); "
     "instance memory lies within one chunk [bad-value]"),
    ("id-zero", MK2.replace("id = 1", "id = 0"), "id = 0", "[instance] id: expected 1..2047, got 0 [bad-value]"),
    ("id-big", MK2.replace("id = 1", "id = 2048"), "id = 2048",
     "[instance] id: expected 1..2047, got 2048 [bad-value]"),
    ("bdf-syntax", MK2.replace("0000:09:00.0", "0000:09:20.0"), "pci =",
     '[instance] devices.nic0.pci: expected a PCI address like "0000:09:00.0" (domain:bus:device.function), '
     "got '0000:09:20.0' [bad-value]"),
    ("bdf-duplicate", MK2 + '[instance.devices.nic1]\npci = "09:00.0"\nvendor_id = 1\ndevice_id = 2\n',
     "[instance.devices]", ""),  # replaced below
    ("v2-u32-cpus", V2.replace("cpus = [2]", "cpus = [0x100000000]").replace("pool_cpus = [2, 3]",
                                                                            "pool_cpus = [0x100000000]"),
     "cpus = [0x100000000]",
     "[instance] cpus: profile v2 writes CPUs as u32 cells; APIC id 0x100000000 does not fit [bad-value]"),
    ("v2-u32-memory", V2.replace("memory_bytes = 0x10000000", "memory_bytes = 0x100000000")
     .replace("size_bytes = 0x20000000", "size_bytes = 0x200000000"), "memory_bytes",
     "[instance] memory_bytes: profile v2 writes memory-bytes as one u32 cell; 0x100000000 does not fit "
     "[bad-value]"),
    ("v2-memory-chunks", V2.replace("base = 0x40000000 }]", "base = 0x40000000 }, { size_bytes = 0x1000 }]"),
     "pool_memory", "[devicetree] pool_memory: profile v2 has one flat memory-base/memory-bytes range, "
     "not memory@N chunks; give one chunk [unsupported]"),
    ("v2-numa", V2.replace("cpus = [2]", "cpus = [2]\nnuma_nodes = [0]"), "numa_nodes",
     "[instance] numa_nodes: profile v2 has no NUMA nodes (mk2 and later) [unsupported]"),
    ("v2-devices", V2.replace("[devicetree]", '[instance.devices.c]\nplatform = "serial8250"\n[devicetree]'),
     "[instance.devices.c]",
     "[instance] devices.c: profile v2 trees describe no devices (mk2 and later) [unsupported]"),
    ("cpus-and-count", MK2.replace("cpus = [2]", "cpus = [2]\ncpu_count = 1"), "cpu_count",
     "[instance] cpu_count: set only one of 'cpus' and 'cpu_count' [conflicting-keys]"),
    ("cpus-without-memory", MK2.replace("memory_bytes = 0x10000000\n", ""), "cpus = [2]",
     "[instance] cpus: 'cpus' needs 'memory_bytes' too [missing-key]"),
    ("cpu-outside-pool", MK2.replace("cpus = [2]", "cpus = [9]"), "cpus = [9]",
     "[instance] cpus: APIC id 9 is not in [devicetree] pool_cpus [bad-value]"),
    ("count-too-big", MK2.replace("cpus = [2]", "cpu_count = 3"), "cpu_count",
     "[instance] cpu_count: 3 CPUs do not fit in a pool of 2 [bad-value]"),
    ("numa-without-memory", MK2.replace("numa_nodes = [0]", "numa_nodes = [1]"), "numa_nodes",
     "[instance] numa_nodes: NUMA node 1 has no pool memory [bad-value]"),
    ("no-profile", 'cmdline_x = 1\n', "", ""),  # replaced below
    ("device-kinds", MK2.replace('platform = "serial8250"', 'platform = "serial8250"\nacpi_hid = "PNP0501"'),
     "[instance.devices.con0]", ""),  # replaced below
    ("pci-ids", MK2.replace("vendor_id = 0x1af4\n", ""), "[instance.devices.nic0]",
     "[instance] devices.nic0: a PCI device needs vendor_id and device_id [missing-key]"),
    ("alias-duplicate", MK2.replace('platform = "serial8250"', 'platform = "serial8250"\nalias = "eth0"'),
     "[instance.devices.con0]", "[instance] devices.con0: alias 'eth0' is also used by nic0 [bad-value]"),
    ("device-name", MK2.replace("[instance.devices.con0]", '[instance.devices."con 0"]'), "[instance]",
     "[instance] devices: device name 'con 0' is not a device-tree node name (letters, digits, ',._+-'; 1..31) "
     "[bad-value]"),
    ("smt-threads", MK2 + "smt_threads = 3\n", "smt_threads",
     "[devicetree] smt_threads: expected 1, 2, 4 or 8 threads per core, got 3 [bad-value]"),
    ("acpi-suffix", '[acpi]\ntables = ["bzImage"]\n', "tables",
     "[acpi] tables: expected .asl (compiled with iasl) or .aml tables, got 'bzImage' [bad-value]"),
    # kernel/multikernel/{dts,baseline}.c choose every address and read PCI aliases only
    ("mk2-instance-base", MK2.replace("memory_bytes = 0x10000000", "memory_bytes = 0x10000000\n"
                                      "memory_base = 0x40000000"), "memory_base",
     "[instance] memory_base: profile mk2 cannot honour a fixed base: the kernel takes instance memory from "
     "the pool allocator and never reads memory-base (kernel/multikernel/dts.c mk_dt_parse_resources) "
     "[unsupported]"),
    ("mk-master-pool-base", recipe_text("mk-master").replace("numa_node = 0 }]", "numa_node = 0, base = 0x40000000 }]"),
     "pool_memory", "[devicetree] pool_memory[0].base: profile mk-master cannot honour a fixed pool base: the "
     "baseline's memory@N takes only size and numa-node-id and the pool picks the address "
     "(kernel/multikernel/baseline.c mk_baseline_parse_memory) [unsupported]"),
    ("mk2-platform-alias", MK2.replace('platform = "serial8250"', 'platform = "serial8250"\nalias = "ttyx"'),
     'alias = "ttyx"', "[instance] devices.con0.alias: profile mk2 reads aliases of PCI devices only "
     "(kernel/multikernel/dts.c mk_dt_add_pci_device) [unsupported]"),
    ("acpi-prebuilt-initrd", '[initramfs]\nimage = "bzImage"\n[acpi]\ntables = ["t.aml"]\n', "tables",
     "[acpi] tables: tables go into the early segment of a built initramfs, but [initramfs] image is prebuilt "
     "[conflicting-keys]"),
]
FIXED = {
    "base-unaligned": (MK2.replace("memory_bytes = 0x10000000", "memory_bytes = 0x10000000\nmemory_base = 0x1001"),
                       "memory_base",
                       "[instance] memory_base: 0x1001 is not aligned to the 4096-byte page [bad-value]"),
    "bdf-duplicate": (MK2 + '[instance.devices.nic1]\npci = "09:00.0"\nvendor_id = 1\ndevice_id = 2\n',
                      "[instance.devices.nic1]",
                      "[instance] devices.nic1: PCI address 0000:09:00.0 is also given to nic0 [bad-value]"),
    "no-profile": ('[instance]\ncpus = [2]\nmemory_bytes = 0x1000\n', "cpus = [2]",
                   "[instance] cpus: set [instance] profile to v2, mk2 or mk-master to describe an instance "
                   "[missing-key]"),
    "device-kinds": (MK2.replace('platform = "serial8250"', 'platform = "serial8250"\nacpi_hid = "PNP0501"'),
                     "[instance.devices.con0]",
                     "[instance] devices.con0: give exactly one of pci, platform or acpi_hid [bad-value]"),
}


@pytest.mark.parametrize(("body", "line_has", "expected"),
                         [FIXED.get(c[0], c[1:]) for c in CASES], ids=[c[0] for c in CASES])
def test_rule_fails_with_its_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     body: str, line_has: str, expected: str) -> None:
    (tmp_path / "t.aml").write_bytes(b"x")
    path = write_recipe(tmp_path, body)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as e:
        load_recipe(path, env={})
    lines = path.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if line_has in text)
    assert e.value.render() == f"spawn.toml:{line}: {expected}"


def test_the_valid_recipes_load(tmp_path: Path) -> None:
    for profile in ("v2", "mk2", "mk-master"):
        load_recipe(write_recipe(tmp_path, recipe_text(profile)), env={})


def test_split_smt_siblings_warn_with_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    body = MK2.replace("pool_cpus = [2, 3]", "pool_cpus = [1, 2, 3]") + "smt_threads = 2\n"
    path = write_recipe(tmp_path, body)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mkspawn"):
        load_recipe(path, env={})
    lines = path.read_text().splitlines()
    pool_line = next(i for i, t in enumerate(lines, 1) if t.startswith("pool_cpus"))
    cpus_line = next(i for i, t in enumerate(lines, 1) if t.startswith("cpus"))
    assert caplog.messages == [
        f"spawn.toml:{pool_line}: [devicetree] pool_cpus: APIC id 1 shares a core with 0, which stays with the "
        "host; keep SMT siblings together",
        f"spawn.toml:{cpus_line}: [instance] cpus: APIC id 2 shares a core with 3, which the instance does not "
        "get; keep SMT siblings together",
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mkspawn"):
        load_recipe(write_recipe(tmp_path, MK2.replace("cpus = [2]", "cpus = [2, 3]") + "smt_threads = 2\n"),
                    env={})
    assert caplog.messages == []
