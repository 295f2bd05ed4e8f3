"""The dpkg answers for the packed host files are remembered in the cache, and asked
again whenever dpkg's state or one of the files changes (issue 15: the two dpkg-query
runs were half of a no-op build)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from mkimage.initramfs.packages import MEMO_NAME, memo_key, owning_packages
from tests.conftest import needs_tool


@pytest.fixture
def state(tmp_path: Path) -> list[Path]:
    """Copies of dpkg's state files: the tests change them, never the real ones."""
    root = tmp_path / "dpkg"
    (root / "info").mkdir(parents=True)
    shutil.copy("/var/lib/dpkg/status", root / "status")
    return [root / "status", root / "info", root / "diversions"]


@pytest.fixture
def owned() -> str:
    """A file dpkg certainly knows: its own query tool."""
    needs_tool("dpkg-query")
    path = shutil.which("dpkg-query")
    assert path is not None
    return path


def dpkg_runs(caplog: pytest.LogCaptureFixture) -> list[str]:
    commands = [r.getMessage().split() for r in caplog.records if r.getMessage().startswith("$ ")]
    runs = [argv[2] for argv in commands if Path(argv[1]).name == "dpkg-query"]
    caplog.clear()
    return runs


def test_a_repeat_is_answered_from_the_memo(tmp_path: Path, state: list[Path], owned: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    with caplog.at_level(logging.DEBUG, logger="mkspawn"):
        first = owning_packages([owned], cache_root=cache, state=state)
        assert dpkg_runs(caplog) == ["-S", "-W"]
        again = owning_packages([owned], cache_root=cache, state=state)
        assert dpkg_runs(caplog) == []
    assert first == again and first[owned].name == "dpkg"


def _touch(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize("change", ["status touched", "a list added to info", "diversions appear"])
def test_a_dpkg_state_change_asks_dpkg_again(tmp_path: Path, state: list[Path], owned: str, change: str,
                                             caplog: pytest.LogCaptureFixture) -> None:
    status, info, diversions = state
    cache = tmp_path / "cache"
    with caplog.at_level(logging.DEBUG, logger="mkspawn"):
        first = owning_packages([owned], cache_root=cache, state=state)
        before = memo_key([owned], state)
        if change == "status touched":
            _touch(status)
        elif change == "a list added to info":
            (info / "newpackage.list").write_text("/usr/bin/new\n")
        else:
            diversions.write_text("")
        dpkg_runs(caplog)
        assert memo_key([owned], state) != before
        assert owning_packages([owned], cache_root=cache, state=state) == first
        assert dpkg_runs(caplog) == ["-S", "-W"]


def test_another_file_at_a_packed_path_asks_dpkg_again(tmp_path: Path, state: list[Path], owned: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """The memo is for these files as they are: a file replaced or rewritten at the same
    path is a different key, never answered from the old one."""
    mine = tmp_path / "motd"
    mine.write_text("hello\n")
    cache = tmp_path / "cache"
    paths = [owned, str(mine)]
    with caplog.at_level(logging.DEBUG, logger="mkspawn"):
        owning_packages(paths, cache_root=cache, state=state)
        before = memo_key(paths, state)
        mine.write_text("hello again\n")
        dpkg_runs(caplog)
        assert memo_key(paths, state) != before
        owning_packages(paths, cache_root=cache, state=state)
        assert dpkg_runs(caplog) == ["-S", "-W"]
        mine.unlink()
        mine.write_text("hello again\n")  # same bytes, another inode
        owning_packages(paths, cache_root=cache, state=state)
        assert dpkg_runs(caplog) == ["-S", "-W"]


def test_a_damaged_memo_is_asked_again(tmp_path: Path, state: list[Path], owned: str,
                                       caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    first = owning_packages([owned], cache_root=cache, state=state)
    (memo,) = (cache / "dpkg").iterdir()
    (memo / MEMO_NAME).write_text((memo / MEMO_NAME).read_text().replace('"dpkg"', '"dpkx"'))
    with caplog.at_level(logging.DEBUG, logger="mkspawn"):
        assert owning_packages([owned], cache_root=cache, state=state) == first
        assert dpkg_runs(caplog) == ["-S", "-W"]

