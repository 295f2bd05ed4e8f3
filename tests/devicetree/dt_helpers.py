"""Shared by the device-tree, handover and ACPI tests: recipes written to a temp dir, and
dtc/fdtget run on blobs."""

from __future__ import annotations

import subprocess
from pathlib import Path

from mkimage.recipe.load import load_recipe
from mkimage.recipe.model import Recipe

HEADER = """\
[metadata]
name = "demo"
version = "1.0"
[kernel]
image = "bzImage"
cmdline = "console=ttyS0"
"""

# The §7.2 example machine: APIC 2 and 3 in the pool, a virtio NIC and a serial port.
MK_INSTANCE = """\
[instance]
name = "app0"
id = 1
profile = "{profile}"
cpus = [2]
memory_bytes = 0x10000000
numa_nodes = [0]
[instance.devices.nic0]
pci = "0000:09:00.0"
vendor_id = 0x1af4
device_id = 0x1041
alias = "eth0"
[instance.devices.con0]
platform = "serial8250"
[devicetree]
pool_cpus = [2, 3]
pool_memory = [{{ size_bytes = 0x20000000, numa_node = 0 }}]
"""

V2_INSTANCE = """\
[instance]
name = "app0"
id = 1
profile = "v2"
cpus = [2]
memory_bytes = 0x10000000
[devicetree]
pool_cpus = [2, 3]
pool_memory = [{ size_bytes = 0x20000000, base = 0x40000000 }]
"""


def recipe_text(profile: str) -> str:
    return V2_INSTANCE if profile == "v2" else MK_INSTANCE.format(profile=profile)


def write_recipe(tmp_path: Path, body: str, name: str = "spawn.toml") -> Path:
    (tmp_path / "bzImage").write_bytes(b"kernel")
    path = tmp_path / name
    path.write_text(HEADER + body, encoding="utf-8")
    return path


def load(tmp_path: Path, body: str) -> Recipe:
    return load_recipe(write_recipe(tmp_path, body), env={})


def tool(*argv: str | Path) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"{argv}: {done.stderr}"
    return done.stdout


def decompile_sorted(blob: Path) -> str:
    """dtc's view of a blob, nodes and properties sorted so order does not matter."""
    return tool("dtc", "-s", "-q", "-I", "dtb", "-O", "dts", blob)


def compile_dts(src: Path, out: Path) -> Path:
    tool("dtc", "-@", "-q", "-I", "dts", "-O", "dtb", "-o", out, src)
    return out
