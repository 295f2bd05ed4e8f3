"""The kernel itself unpacks every compression we write and runs the default init."""

from __future__ import annotations

import re
import secrets
from pathlib import Path

import pytest

from mkimage.initramfs.build import build_initramfs
from mkimage.recipe.model import Compression, InitramfsSpec
from tests.conftest import missing, needs_tool
from tests.initramfs.initramfs_helpers import boot_serial

READY_RE = re.compile(r"MKSPAWN-READY release=(\S+) cpus=(\d+) mem_kb=(\d+)")


@pytest.mark.slow
@pytest.mark.parametrize("compression", list(Compression))
def test_debian_kernel_unpacks_and_runs_init(tmp_path: Path, debian_kernel: Path, compression: Compression) -> None:
    needs_tool("qemu-system-x86_64")
    config = debian_kernel.parent / debian_kernel.name.replace("vmlinuz-", "config-")
    if not config.is_file():
        missing(f"{config} is missing beside the Debian kernel")
    nonce = secrets.token_hex(8)
    spec = InitramfsSpec(compression=compression, command=f"echo nonce-{nonce} from $(cat /proc/cmdline)")
    result = build_initramfs(spec, tmp_path / "initrd.img", source_date_epoch=0, kernel_config=config)
    assert result.compression is not Compression.AUTO
    serial = boot_serial(debian_kernel, result.path)
    ready = READY_RE.search(serial)
    assert ready, f"no ready line; serial tail:\n{serial[-2000:]}"
    release = debian_kernel.name.removeprefix("vmlinuz-")
    assert ready.group(1) == release and ready.group(2) == "1"
    assert 400_000 < int(ready.group(3)) < 512 * 1024
    assert f"nonce-{nonce} from console=ttyS0" in serial
    assert "MKSPAWN-DONE rc=0" in serial
