"""The check's host initramfs: the part every check shares is packed once and kept as a
store entry; each run only appends its payload as a second segment."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from mkimage.initramfs.reader import read_initramfs_file
from mkimage.qemu import hostfs
from tests.conftest import missing


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (hostfs.PYTHON.is_file() and hostfs.CTYPES_SO.is_file()):
        missing(f"{hostfs.PYTHON} with ctypes is not installed")
    return hostfs.python_runtime(tmp_path_factory.mktemp("cache") / "check")


def payload(tmp_path: Path, text: bytes) -> Path:
    d = tmp_path / f"payload-{text.hex()}"
    d.mkdir()
    (d / "kernel").write_bytes(text * 1000)
    (d / "loader.args").write_text("kexec\n")
    return d


def names(path: Path) -> list[set[str]]:
    return [{m.name.decode() for m in seg.members} for seg in read_initramfs_file(path)]


def test_the_shared_part_is_packed_once_and_the_payload_follows_it(tmp_path: Path, runtime: Path) -> None:
    first = hostfs.build_host_initramfs(runtime, payload(tmp_path, b"one"), tmp_path / "1.cpio")
    [entry] = (runtime.parent / "host-initramfs").iterdir()
    published = (entry / "entry.json").stat().st_mtime_ns
    second = hostfs.build_host_initramfs(runtime, payload(tmp_path, b"two"), tmp_path / "2.cpio")
    assert (entry / "entry.json").stat().st_mtime_ns == published  # served, not packed again
    base, pay = names(second)
    assert {"init", "usr/bin/python3.11", "dev/urandom"} <= base and not any(n.startswith("mkspawn") for n in base)
    assert pay == {"mkspawn", "mkspawn/kernel", "mkspawn/loader.args"}
    size = (entry / hostfs.BASE_NAME).stat().st_size
    assert first.read_bytes()[:size] == second.read_bytes()[:size] == (entry / hostfs.BASE_NAME).read_bytes()
    assert first.read_bytes()[size:] != second.read_bytes()[size:]


def test_a_changed_host_file_rebuilds_the_shared_part(tmp_path: Path, runtime: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    hostfs.build_host_initramfs(runtime, payload(tmp_path, b"a"), tmp_path / "a.cpio")
    [entry] = (runtime.parent / "host-initramfs").iterdir()
    recorded = (entry / "entry.json").stat().st_mtime_ns
    os.utime(runtime / "usr" / "lib" / "python3.11" / "os.py")  # any write to a packed file changes its stat key
    hostfs.build_host_initramfs(runtime, payload(tmp_path, b"b"), tmp_path / "b.cpio")
    assert (entry / "entry.json").stat().st_mtime_ns != recorded
    base = (entry / hostfs.BASE_NAME).read_bytes()
    base_bytes = bytearray(base)
    base_bytes[len(base) // 2] ^= 1
    (entry / hostfs.BASE_NAME).write_bytes(bytes(base_bytes))
    with caplog.at_level(logging.WARNING, logger="mkspawn"):
        out = hostfs.build_host_initramfs(runtime, payload(tmp_path, b"c"), tmp_path / "c.cpio")
    assert "damaged" in caplog.text
    assert out.read_bytes()[:len(base)] == base
