"""The check's default host: Debian's prebuilt cloud kernel, fetched with apt-get download
into the cache (never installed), re-checked on every use, with the tiny self-built host
as the fallback where apt cannot provide it."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

import pytest

from mkimage.context import default_cache_root
from mkimage.errors import ToolError
from mkimage.kernel.contract import check_image
from mkimage.qemu import hostkernel
from mkimage.qemu.check import Mode, resolve_host_kernel
from tests.conftest import missing, needs_tool


def fetched(cache_root: Path) -> Path:
    try:
        return hostkernel.debian_kernel(cache_root)
    except ToolError as e:
        missing(f"cannot fetch a Debian kernel package: {e.message}")


def test_a_kexec_check_without_host_options_boots_debians_kernel(debian_kernel: Path) -> None:
    host = resolve_host_kernel(None, None, cache_root=default_cache_root(), mode=Mode.KEXEC)
    assert host.image == debian_kernel
    assert host.origin == hostkernel.ENTRY_KEY
    assert host.image.is_relative_to(default_cache_root() / "host-kernel")
    assert check_image(host.image, abi_profile="none", arch="x86_64").ok
    # Only boot/ is kept: the package's modules are not needed by the check's host.
    assert sorted(p.name for p in host.image.parent.parent.iterdir()) == ["boot", "entry.json"]


def test_a_damaged_prebuilt_kernel_is_fetched_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    needs_tool("apt-get", "dpkg-deb")
    root = tmp_path / "cache"
    image = fetched(root)
    good = image.read_bytes()
    image.write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, logger="mkspawn"):
        again = fetched(root)
    assert "check: cache entry" in caplog.text and "damaged" in caplog.text
    assert again.read_bytes() == good


def test_without_apt_the_fetch_fails_cleanly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(ToolError) as caught:
        hostkernel.debian_kernel(tmp_path / "cache")
    assert caught.value.code == "tool-missing"
    assert "apt-get" in caught.value.message
    assert not (tmp_path / "cache" / "host-kernel").exists()


@pytest.mark.slow
def test_without_apt_the_check_builds_the_tiny_host_and_says_so(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    needs_tool("make", "gcc")
    keep = {Path(shutil.which(t) or "/nonexistent").parent for t in ("make", "gcc", "ccache", "flex", "bison", "tar")}
    bins = tmp_path / "bin"
    bins.mkdir()
    for directory in keep:  # the toolchain, without apt-get
        for tool in directory.iterdir():
            if tool.name not in hostkernel.APT_TOOLS and not (bins / tool.name).exists():
                (bins / tool.name).symlink_to(tool)
    # A cache without the Debian kernel, holding (hard links to) the user's kernel builds,
    # so the tiny host is a cache hit once it was built.
    root = tmp_path / "cache"
    (root / "kernel").mkdir(parents=True)
    built = default_cache_root() / "kernel" / "out"
    if built.is_dir():
        subprocess.run(["cp", "-al", str(built), str(root / "kernel" / "out")], check=True)
    monkeypatch.setenv("PATH", str(bins))
    with caplog.at_level(logging.WARNING, logger="mkspawn"):
        host = resolve_host_kernel(None, None, cache_root=root, mode=Mode.KEXEC)
    [line] = [r.getMessage() for r in caplog.records if "prebuilt" in r.getMessage()]
    assert "no prebuilt host kernel" in line and "qemu-host.toml" in line
    assert host.origin.endswith("qemu-host.toml")
