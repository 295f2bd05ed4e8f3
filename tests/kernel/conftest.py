"""Fixtures shared by the kernel-stage tests."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest


@pytest.fixture
def make_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A ``make`` first on PATH that appends its arguments to a file, then runs the real one."""
    real = shutil.which("make")
    assert real is not None
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "make-calls.txt"
    record.write_text("")
    wrapper = bin_dir / "make"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {record}\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return record


def recorded_calls(record: Path) -> list[str]:
    """The argument lines the ``make_calls`` wrapper recorded, oldest first."""
    return record.read_text().splitlines()
