"""Fixtures of the boot-check tests: real kernels (built through the kernel stage's
cache), a signed bundle of recipes/minimal.toml, and a /proc scan for stray QEMUs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkimage.initramfs.build import build_initramfs
from mkimage.kernel.build import build_kernel
from mkimage.pipeline import build_bundle
from mkimage.qemu.check import HostKernel, resolve_host_kernel
from mkimage.recipe.load import load_recipe
from mkimage.recipe.model import InitramfsSpec
from mkimage.signing.keys import PassphraseSource, load_private_key
from tests.conftest import needs_tool, prebuilt_recipe

REPO = Path(__file__).resolve().parents[2]
KEYS = REPO / "tests" / "data" / "keys"
EPOCH = 1_700_000_000


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mkspawn"


def qemu_processes(marker: str) -> list[int]:
    """PIDs of live QEMU processes whose command line mentions ``marker`` (no psutil)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and argv and b"qemu-system" in argv[0] and any(marker.encode() in a for a in argv):
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="session")
def qemu() -> None:
    needs_tool("qemu-system-x86_64", "busybox")


@pytest.fixture(scope="session")
def tiny_host(qemu: None) -> HostKernel:
    """recipes/qemu-host.toml's kernel (built once, then from the kernel cache)."""
    return resolve_host_kernel(None, REPO / "recipes" / "qemu-host.toml", cache_root=cache_root())


@pytest.fixture(scope="session")
def minimal_kernel(qemu: None) -> Path:
    recipe = load_recipe(REPO / "recipes" / "minimal.toml")
    return build_kernel(recipe.kernel, arch="x86_64", cache_root=cache_root(), source_date_epoch=0).image


@pytest.fixture(scope="session")
def spawn_initrd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default busybox init with a command, so the console shows a pattern to expect."""
    out = tmp_path_factory.mktemp("spawn") / "initrd.img"
    build_initramfs(InitramfsSpec(command="echo spawn-says-hello"), out, source_date_epoch=EPOCH)
    return out


@pytest.fixture(scope="session")
def trust_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("trust")
    shutil.copy(KEYS / "test-ed25519.pub.pem", d)
    return d


def make_bundle(directory: Path, kernel: Path, initrd: Path, cmdline: str = "console=ttyS0 panic=-1") -> Path:
    """A bundle signed with the test key (tests/data/keys), through the bundle builder."""
    recipe_path = prebuilt_recipe(directory, kernel, name="check-test", cmdline=cmdline, initrd=initrd, epoch=EPOCH)
    key = load_private_key(KEYS / "test-ed25519.pem", PassphraseSource(None, "UNSET"), {})
    out = directory / "spawn.mkb"
    build_bundle(load_recipe(recipe_path), out, [key])
    return out


@pytest.fixture(scope="session")
def minimal_bundle(tmp_path_factory: pytest.TempPathFactory, minimal_kernel: Path, spawn_initrd: Path) -> Path:
    return make_bundle(tmp_path_factory.mktemp("minimal"), minimal_kernel, spawn_initrd)


@pytest.fixture
def no_stray_qemu(tmp_path: Path) -> Iterator[Path]:
    """A log directory; after the test no QEMU mentioning it may be alive."""
    yield tmp_path
    assert qemu_processes(str(tmp_path)) == []
