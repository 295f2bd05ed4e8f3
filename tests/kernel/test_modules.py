"""Kernel modules end to end: the kernel stage builds and installs them, the initramfs
carries a named module with its dependency, and busybox modprobe loads both in QEMU.

The real kernel (tests/data/recipes/modules.toml: the minimal spawn plus MODULES=y and
TEST_STATIC_KEYS=m, whose test_static_keys.ko needs test_static_key_base.ko) is built
once and then answered by the project cache, like the minimal kernel in test_build.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import subprocess
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from mkimage.errors import InputError
from mkimage.initramfs.build import build_initramfs
from mkimage.initramfs.reader import read_initramfs
from mkimage.kernel.build import KernelBuild, build_kernel
from mkimage.pipeline import SYSTEM_DIRS, build_bundle
from mkimage.recipe.load import load_recipe
from mkimage.recipe.model import KernelSource, KernelSpec, Recipe
from tests.conftest import missing, needs_tool
from tests.initramfs.initramfs_helpers import boot_serial
from tests.kernel.conftest import recorded_calls
from tests.kernel.test_build import CACHE_ROOT, DEBIAN_SOURCE

REPO = Path(__file__).resolve().parents[2]
MODULES_RECIPE = REPO / "tests" / "data" / "recipes" / "modules.toml"
MODULE = "kernel/lib/test_static_keys.ko"
DEPENDENCY = "kernel/lib/test_static_key_base.ko"


def _recipe() -> Recipe:
    needs_tool("make", "gcc", "flex", "bison", "bc", "tar", "patch", "depmod")
    if not DEBIAN_SOURCE.is_file():
        missing(f"{DEBIAN_SOURCE} is missing (Debian package linux-source-6.12)")
    return load_recipe(MODULES_RECIPE)


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    return _recipe()


@pytest.fixture(scope="module")
def modules_kernel(recipe: Recipe) -> KernelBuild:
    return build_kernel(recipe.kernel, arch="x86_64", cache_root=CACHE_ROOT, source_date_epoch=0)


def _initramfs(recipe: Recipe, kernel: KernelBuild, out: Path) -> Path:
    return build_initramfs(recipe.initramfs, out, source_date_epoch=0, kernel_config=kernel.config,
                           modules_dir=kernel.modules_dir).path


@pytest.mark.slow
def test_modules_are_built_stripped_and_installed_in_the_entry(modules_kernel: KernelBuild) -> None:
    tree = modules_kernel.modules_dir
    assert tree is not None and tree.name == modules_kernel.release
    assert tree.is_relative_to(CACHE_ROOT / "kernel" / "out" / modules_kernel.cache_key)
    assert f"{MODULE}: {DEPENDENCY}" in (tree / "modules.dep").read_text().splitlines()
    assert "CONFIG_MODULES=y" in modules_kernel.config.read_text().splitlines()
    assert not (tree / "build").is_symlink(), "the link into the deleted O= tree is removed"
    with open(tree / MODULE, "rb") as f:
        assert ELFFile(f).get_section_by_name(".debug_info") is None, "INSTALL_MOD_STRIP=1"
    assert modules_kernel.tools["depmod"].startswith("kmod version")


@pytest.mark.slow
def test_modules_cache_hit_runs_no_make(modules_kernel: KernelBuild, make_calls: Path) -> None:
    again = build_kernel(_recipe().kernel, arch="x86_64", cache_root=CACHE_ROOT, source_date_epoch=0)
    assert again.cache_hit and again.modules_dir == modules_kernel.modules_dir
    assert set(recorded_calls(make_calls)) <= {"--version"}


@pytest.mark.slow
def test_busybox_modprobe_loads_the_module_and_its_dependency(tmp_path: Path, recipe: Recipe,
                                                                modules_kernel: KernelBuild) -> None:
    needs_tool("qemu-system-x86_64")
    nonce = secrets.token_hex(8)
    command = f"{recipe.initramfs.command} && echo modules-{nonce}"
    spec = dataclasses.replace(recipe.initramfs, command=command)
    initrd = build_initramfs(spec, tmp_path / "initrd", source_date_epoch=0, kernel_config=modules_kernel.config,
                             modules_dir=modules_kernel.modules_dir).path
    serial = boot_serial(modules_kernel.image, initrd, timeout_s=120)
    loaded = {m.group(1): m.group(2) for m in re.finditer(r"^(test_static_key\w*) \d+ \d+ (\S*)", serial, re.M)}
    assert set(loaded) == {"test_static_keys", "test_static_key_base"}, serial[-3000:]
    assert "test_static_keys" in loaded["test_static_key_base"], "/proc/modules shows who uses the base"
    assert f"modules-{nonce}" in serial and "MKSPAWN-DONE rc=0" in serial


@pytest.mark.slow
def test_initramfs_carries_the_closure_and_indexes_for_it_only(tmp_path: Path, recipe: Recipe,
                                                                 modules_kernel: KernelBuild) -> None:
    first = _initramfs(recipe, modules_kernel, tmp_path / "a")
    second = _initramfs(recipe, modules_kernel, tmp_path / "b")
    assert first.read_bytes() == second.read_bytes(), "depmod's indexes are reproducible"
    members = {m.name.decode(): m for seg in read_initramfs(first.read_bytes()) for m in seg.members}
    prefix = f"lib/modules/{modules_kernel.release}/"
    modules = sorted(n.removeprefix(prefix) for n in members if n.startswith(prefix) and ".ko" in n)
    assert modules == [DEPENDENCY, MODULE]
    assert members[prefix + "modules.dep"].data == f"{MODULE}: {DEPENDENCY}\n{DEPENDENCY}:\n".encode()
    assert {"modules.alias", "modules.dep.bin", "modules.symbols"} <= {n.removeprefix(prefix) for n in members}
    assert modules_kernel.modules_dir is not None
    assert members[prefix + MODULE].data == (modules_kernel.modules_dir / MODULE).read_bytes()


@pytest.mark.slow
def test_unknown_module_in_the_real_tree_suggests_the_real_names(tmp_path: Path, recipe: Recipe,
                                                                   modules_kernel: KernelBuild) -> None:
    spec = dataclasses.replace(recipe.initramfs, modules=["test-static-key"])
    with pytest.raises(InputError, match=r"initramfs.modules\[0\]: no module 'test-static-key' .*did you mean "
                                        r"'test_static_keys', 'test_static_key_base'\?"):
        build_initramfs(spec, tmp_path / "x", source_date_epoch=0, modules_dir=modules_kernel.modules_dir)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_bundle_initrd_carries_the_modules(tmp_path: Path, recipe: Recipe, modules_kernel: KernelBuild) -> None:
    result = build_bundle(recipe, tmp_path / "m.mkb", cache_root=CACHE_ROOT)
    initrd = next(c for c in result.manifest.components if c.path == "initrd")
    subprocess.run(["tar", "-xf", str(result.path), "-C", str(tmp_path), "initrd"], check=True)
    data = (tmp_path / "initrd").read_bytes()
    assert initrd.size == len(data)
    names = {m.name.decode() for seg in read_initramfs(data) for m in seg.members}
    prefix = f"lib/modules/{modules_kernel.release}/"
    assert {prefix + MODULE, prefix + DEPENDENCY, prefix + "modules.dep"} <= names
    assert result.manifest.kernel_release == modules_kernel.release
    provenance = result.manifest.provenance.tools
    assert provenance["depmod"].startswith("kmod") and provenance["kmod"].startswith("kmod")
    # Compare paths, not strings: a checkout under ".../.cache/mkspawn-ci/" merely shares
    # the cache root's text.  No host path other than a system file is recorded at all.
    names = [Path(i.name) for i in result.manifest.provenance.inputs]
    assert not any(n.is_relative_to(CACHE_ROOT) for n in names), \
        "module files are identified by the kernel's inputs, not by cache paths"
    assert all(not n.is_absolute() or any(n.is_relative_to(d) for d in SYSTEM_DIRS) for n in names), names


def test_stand_in_tree_installs_modules_and_drops_the_build_link(tmp_path: Path, make_calls: Path) -> None:
    """What the stage does around `make modules_install`, on a Makefile that answers instantly."""
    needs_tool("make", "depmod")
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Kconfig").write_text("")
    mod = "$(INSTALL_MOD_PATH)/lib/modules/9.9.9-test"
    (tree / "Makefile").write_text(
        "tinyconfig:\n\tprintf 'CONFIG_MODULES=y\\n' > $(O)/.config\n"
        "olddefconfig:\n\t@true\n"
        "bzImage:\n\t@mkdir -p $(O)/arch/x86/boot $(O)/include/config\n"
        "\t@echo image > $(O)/arch/x86/boot/bzImage; echo elf > $(O)/vmlinux; echo map > $(O)/System.map\n"
        "\t@echo 9.9.9-test > $(O)/include/config/kernel.release\n"
        "modules:\n\t@echo '  CC [M]  lib/m.o'; echo ko > $(O)/m.ko\n"
        f"modules_install:\n\t@mkdir -p {mod}/kernel/lib; cp $(O)/m.ko {mod}/kernel/lib/\n"
        f"\t@echo 'kernel/lib/m.ko:' > {mod}/modules.dep; echo '$(INSTALL_MOD_STRIP) $(DEPMOD)' > {mod}/vars\n"
        f"\t@ln -s $(O) {mod}/build\n"
    )
    spec = KernelSpec(source=KernelSource(dir=tree), options={"MODULES": "y"})
    cache = tmp_path / "cache"
    built = build_kernel(spec, arch="x86_64", cache_root=cache, source_date_epoch=0, use_ccache=False)
    entry_dir = cache / "kernel" / "out" / built.cache_key
    assert built.modules_dir == entry_dir / "modroot" / "lib" / "modules" / "9.9.9-test"
    assert (built.modules_dir / "kernel" / "lib" / "m.ko").read_text() == "ko\n"
    strip, depmod = (built.modules_dir / "vars").read_text().split()
    assert strip == "1" and Path(depmod).name == "depmod"
    assert not (built.modules_dir / "build").exists() and not (built.modules_dir / "build").is_symlink()
    targets = [c.split()[-2:] for c in recorded_calls(make_calls) if c != "--version"]
    assert ["bzImage", "modules"] in targets, "one make builds the image and the modules"
    assert targets[-1][-1] == "modules_install"

    # An entry written before modules were installed (no "modules" field, MODULES=y) is rebuilt.
    entry_path = entry_dir / "entry.json"
    entry = json.loads(entry_path.read_text())
    del entry["modules"]
    entry_path.write_text(json.dumps(entry))
    again = build_kernel(spec, arch="x86_64", cache_root=cache, source_date_epoch=0, use_ccache=False)
    assert not again.cache_hit and again.modules_dir == built.modules_dir
    assert build_kernel(spec, arch="x86_64", cache_root=cache, source_date_epoch=0, use_ccache=False).cache_hit
