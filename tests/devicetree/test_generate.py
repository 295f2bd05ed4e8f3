"""Every generated blob decompiles with dtc and holds what the recipe says; user .dts
files merge in, and their errors name the file and line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mkimage.devicetree.build import OverlayTooLargeError, build_devicetree, generated_trees
from mkimage.devicetree.compile import SourceError
from mkimage.devicetree.fdt import decode_fdt
from mkimage.devicetree.schema import place_cpus
from mkimage.recipe.model import AbiProfile
from tests.conftest import needs_tool
from tests.devicetree.dt_helpers import load, recipe_text, tool, write_recipe

PROFILES = [p for p in AbiProfile if p is not AbiProfile.NONE]
RICH = """\
[instance]
name = "web"
id = 2047
profile = "{profile}"
cpus = [4, 5, 0x100000000]
memory_bytes = 0x30000000
numa_nodes = [1, 0]
[instance.devices.nic1]
pci = "3a:1f.7"
vendor_id = 0x8086
device_id = 0x10ca
[instance.devices.uart]
acpi_hid = "PNP0501"
[devicetree]
pool_cpus = [4, 5, 6, 7, 0x100000000]
pool_memory = [
    {{ size_bytes = 0x40000000, numa_node = 0 }},
    {{ size_bytes = 0x1000, numa_node = 1 }},
]
"""


@pytest.mark.parametrize("profile", PROFILES)
def test_dtc_decompiles_every_blob_and_the_tree_is_the_model(tmp_path: Path, profile: AbiProfile) -> None:
    needs_tool("dtc", "fdtget")
    body = recipe_text("v2") if profile is AbiProfile.V2 else RICH.format(profile=profile.value)
    recipe = load(tmp_path, body)
    trees = {t.kind.value: t for t in generated_trees(recipe)}
    for f in build_devicetree(recipe, tmp_path / "work"):
        assert f.path.is_file() and f.member.startswith("devicetree/")
        if f.role.value == "dts":
            continue
        assert tool("dtc", "-I", "dtb", "-O", "dts", f.path).startswith("/dts-v1/;")
        kind = f.path.stem
        assert decode_fdt(f.path.read_bytes()).root == trees[kind].tree.to_fdt()
    work = tmp_path / "work" / "devicetree"
    inst = recipe.instance
    if profile is AbiProfile.V2:
        got = tool("fdtget", "-t", "u", work / "instance.dtb", "/instances/app0/resources", "cpus").split()
        assert [int(c) for c in got] == inst.cpus
        assert tool("fdtget", "-t", "x", work / "instance.dtb", "/instances/app0/resources", "memory-bytes").strip() \
            == f"{inst.memory_bytes:x}"
        return
    resources = "/fragment@0/__overlay__/instance-create/resources"
    cells = [int(c, 16) for c in tool("fdtget", "-t", "x", work / "instance.dtbo", resources, "cpus").split()]
    assert [hi << 32 | lo for hi, lo in zip(cells[::2], cells[1::2], strict=True)] == inst.cpus
    assert "memory-base" not in tool("fdtget", "-p", work / "instance.dtbo", resources).split()
    assert tool("fdtget", "-t", "u", work / "instance.dtbo", resources, "numa-nodes").split() == ["1", "0"]
    devices = f"{resources}/devices"
    assert tool("fdtget", "-t", "s", work / "instance.dtbo", f"{devices}/nic1", "pci-id").strip() == "0000:3a:1f.7"
    assert tool("fdtget", "-t", "x", work / "instance.dtbo", f"{devices}/nic1", "device-id").strip() == "10ca"
    assert tool("fdtget", "-t", "s", work / "instance.dtbo", f"{devices}/uart", "acpi-hid").strip() == "PNP0501"
    assert tool("fdtget", "-l", work / "instance.dtbo", "/").split() == ["fragment@0"]  # no device-add fragment
    baseline = work / "baseline.dtb"
    assert tool("fdtget", "-t", "x", baseline, "/resources/memory@0", "size").split() == ["0", "40000000"]
    assert "reg" not in tool("fdtget", "-p", baseline, "/resources/memory@0").split()
    assert "acpi-hid" not in tool("fdtget", "-p", baseline, "/resources/devices/uart").split()
    assert tool("fdtget", "-t", "x", baseline, "/resources/memory@1", "size").split() == ["0", "1000"]
    assert tool("fdtget", "-t", "x", baseline, "/resources/devices/nic1", "vendor-id").strip() == "8086"
    assert tool("fdtget", "-l", baseline, "/").split() == ["resources"]  # no aliases without an alias


def test_cpu_count_is_placed_on_whole_cores(tmp_path: Path) -> None:
    assert place_cpus([2, 3, 4, 5, 7], 2, 2) == (2, 3)
    assert place_cpus([3, 4, 5, 6, 7], 2, 2) == (4, 5)
    assert place_cpus([3, 4, 5, 6, 7], 3, 2) == (3, 4, 5)
    assert place_cpus([2, 3, 4, 5], 3, 1) == (2, 3, 4)
    body = recipe_text("mk2").replace("cpus = [2]\n", "cpu_count = 2\n", 1)
    (tree, _) = generated_trees(load(tmp_path, body))
    create = tree.tree.to_fdt().find("/fragment@0/__overlay__/instance-create/resources")
    assert create is not None and create.prop("cpus") == (2).to_bytes(8, "big") + (3).to_bytes(8, "big")


def test_user_dts_nodes_are_merged(tmp_path: Path) -> None:
    needs_tool("dtc", "fdtget")
    (tmp_path / "extra.dts").write_text(
        '/ { fragment@0 { __overlay__ { instance-create { resources { llc-way-mask = <0xf0>; }; }; }; }; };\n')
    (tmp_path / "pool.dts").write_text('/ { resources { pci-host-bridges { }; }; };\n')
    body = recipe_text("mk2") + 'instance_dts = "extra.dts"\nbaseline_dts = "pool.dts"\n'
    files = {f.member: f.path for f in build_devicetree(load(tmp_path, body), tmp_path / "work")}
    overlay = files["devicetree/instance.dtbo"]
    resources = "/fragment@0/__overlay__/instance-create/resources"
    assert tool("fdtget", "-t", "x", overlay, resources, "llc-way-mask").strip() == "f0"
    assert tool("fdtget", "-t", "x", overlay, resources, "memory-bytes").split() == ["0", "10000000"]
    assert "pci-host-bridges" in tool("fdtget", "-l", files["devicetree/baseline.dtb"], "/resources").split()
    bundled = files["devicetree/instance.dts"].read_text()
    assert "llc-way-mask" in bundled and "/include/" not in bundled


@pytest.mark.parametrize(("text", "line", "message"), [
    ("/ {\n\tfoo = <1>\n\tbar;\n};\n", 3, "dtc: syntax error"),
    ("/ { a = <1>; };\n\n/ { b = &nowhere; };\n", None, "dtc: "),
])
def test_bad_user_dts_names_file_and_line_and_writes_nothing(
        tmp_path: Path, text: str, line: int | None, message: str) -> None:
    needs_tool("dtc")
    (tmp_path / "extra.dts").write_text(text)
    recipe = load(tmp_path, recipe_text("mk2") + 'instance_dts = "extra.dts"\n')
    with pytest.raises(SourceError) as e:
        build_devicetree(recipe, tmp_path / "work")
    assert e.value.loc.file == tmp_path / "extra.dts" and e.value.loc.line == line
    assert e.value.message.startswith(message)
    assert not list((tmp_path / "work").rglob("*"))


def test_dt_command_prints_overlay_and_baseline(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, recipe_text("mk2"))

    def dt(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "mkimage", "dt", recipe.name, *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60, check=False)

    overlay, baseline = dt(), dt("--baseline")
    assert overlay.returncode == 0 and baseline.returncode == 0, overlay.stderr + baseline.stderr
    assert overlay.stdout.startswith("/dts-v1/;\n/plugin/;\n") and "instance-create {" in overlay.stdout
    assert "/plugin/" not in baseline.stdout and 'compatible = "multikernel-v1";' in baseline.stdout
    none = subprocess.run([sys.executable, "-m", "mkimage", "dt", write_recipe(tmp_path, "", "bare.toml").name],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert none.returncode == 2 and "[no-instance]" in none.stderr


def test_outputs_are_reproducible_across_work_dirs(tmp_path: Path) -> None:
    needs_tool("dtc")
    recipe = load(tmp_path, recipe_text("mk2"))
    first = {f.member: f.path.read_bytes() for f in build_devicetree(recipe, tmp_path / "a")}
    second = {f.member: f.path.read_bytes() for f in build_devicetree(recipe, tmp_path / "b" / "deeper")}
    assert first == second and len(first) == 4


def test_an_overlay_over_one_page_is_refused_and_not_written(tmp_path: Path) -> None:
    """overlays/new takes one kernfs page per write (overlay.c mk_overlay_new_write)."""
    needs_tool("dtc")
    requests = ", ".join(f'{{ name = "r{i}", size_bytes = 0x1000 }}' for i in range(120))
    body = recipe_text("mk2").replace("[instance.devices.nic0]", f"preserve = [{requests}]\n[instance.devices.nic0]")
    with pytest.raises(OverlayTooLargeError, match=r"the instance overlay is \d+ bytes; a multikernel host takes "
                                                   "at most 4096"):
        build_devicetree(load(tmp_path, body), tmp_path / "work")
    assert not list((tmp_path / "work").rglob("*.dtbo"))
