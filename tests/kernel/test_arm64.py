"""arm64 cross builds: a tinyconfig kernel cross-compiled with Debian's aarch64-linux-gnu
toolchain (built once, then answered by the project cache) yields the uncompressed Image
arm64 kexec_file_load takes, passes the arm64 contract checks, names its release, and
boots in qemu-system-aarch64 to the banner and our patch's marker."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mkimage.errors import InputError
from mkimage.kernel.arm64_image import parse_arm64_header
from mkimage.kernel.build import KernelBuild, build_kernel
from mkimage.kernel.contract import check_image
from mkimage.kernel.release import embedded_config, kernel_release
from mkimage.pipeline import build_bundle
from mkimage.recipe.load import load_recipe
from mkimage.recipe.model import Recipe
from mkimage.run import run_until
from tests.conftest import missing, needs_tool
from tests.kernel.test_build import CACHE_ROOT, DEBIAN_SOURCE, MARKER

REPO = Path(__file__).resolve().parents[2]
ARM64_RECIPE = REPO / "tests" / "data" / "recipes" / "minimal-arm64.toml"
CROSS = "aarch64-linux-gnu-"
BOOT_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def recipe() -> Recipe:
    needs_tool("make", f"{CROSS}gcc", f"{CROSS}ld", "flex", "bison", "bc", "tar", "patch")
    if not DEBIAN_SOURCE.is_file():
        missing(f"{DEBIAN_SOURCE} is missing (Debian package linux-source-6.12)")
    return load_recipe(ARM64_RECIPE)


@pytest.fixture(scope="module")
def arm64_kernel(recipe: Recipe) -> KernelBuild:
    return build_kernel(recipe.kernel, arch="arm64", cache_root=CACHE_ROOT, source_date_epoch=0)


@pytest.mark.slow
def test_cross_build_gives_an_uncompressed_image_that_passes_the_contract(arm64_kernel: KernelBuild,
                                                                           recipe: Recipe) -> None:
    data = arm64_kernel.image.read_bytes()
    header = parse_arm64_header(data)  # the magic at 0x38: a raw Image, not Image.gz
    assert header.image_size >= len(data) and not header.big_endian and header.page_size == 4096
    report = check_image(arm64_kernel.image, abi_profile="none", arch="arm64", cmdline=recipe.kernel.cmdline.encode())
    assert report.ok, [(r.name, r.detail) for r in report.failures]
    assert kernel_release(data) == arm64_kernel.release and arm64_kernel.release.startswith("6.12.")
    assert embedded_config(data).text == arm64_kernel.config.read_text()
    config = arm64_kernel.config.read_text().splitlines()
    assert {"CONFIG_ARM64=y", "CONFIG_KEXEC_FILE=y", "CONFIG_SERIAL_AMBA_PL011_CONSOLE=y"} <= set(config)
    assert arm64_kernel.tools["gcc"].startswith(f"{CROSS}gcc"), "the cross compiler's version is in the key"
    assert arm64_kernel.tools["ld"].startswith("GNU ld")
    make = json.loads((arm64_kernel.image.parent / "entry.json").read_text())["make"]
    assert f"ARCH=arm64 CROSS_COMPILE={CROSS}" in make and make.endswith(" Image")
    assert MARKER in arm64_kernel.vmlinux.read_bytes()


@pytest.mark.slow
def test_arm64_image_boots_in_qemu_to_the_banner_and_marker(arm64_kernel: KernelBuild, tmp_path: Path) -> None:
    needs_tool("qemu-system-aarch64")
    argv = ["qemu-system-aarch64", "-M", "virt", "-cpu", "max", "-m", "256M", "-nographic", "-no-reboot",
            "-kernel", str(arm64_kernel.image), "-append", "console=ttyAMA0 panic=-1"]
    seen: list[str] = []

    def on_line(_t: float, line: str) -> bool:
        seen.append(line)
        return MARKER.decode() in line  # the marker comes right after the banner

    done = run_until(argv, stage="test", timeout_s=BOOT_TIMEOUT_S, log_path=tmp_path / "console.log",
                     on_line=on_line)
    console = "\n".join(seen)
    assert done.stopped, f"no marker within {BOOT_TIMEOUT_S}s; console tail:\n{console[-2000:]}"
    banner = re.search(r"Linux version (\S+) \(mkspawn@mkspawn\)", console)
    assert banner and banner.group(1) == arm64_kernel.release


@pytest.mark.slow
def test_arm64_recipe_with_the_host_busybox_is_refused(arm64_kernel: KernelBuild, recipe: Recipe,
                                                       tmp_path: Path) -> None:
    needs_tool("busybox")
    assert recipe.initramfs.busybox
    out = tmp_path / "arm64.mkb"
    with pytest.raises(InputError) as e:
        build_bundle(recipe, out, cache_root=CACHE_ROOT)
    assert e.value.code == "elf-machine-mismatch"
    assert e.value.message.startswith("initramfs.busybox: /bin/busybox is an ELF for x86-64 (e_machine EM_X86_64), "
                                      "but the recipe targets arm64")
    assert not out.exists()
