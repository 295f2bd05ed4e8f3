"""`mkspawn doctor`: the host's tools probed for real, and what is missing named with its package."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from mkimage.doctor import TOOLS, package_of, parse_version
from tests.conftest import missing, run_mkspawn

TOOL_FIELDS = {"name", "purpose", "package", "path", "version", "usable", "problem"}


def doctor(tmp_path: Path, *args: object, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    # A cache of its own: walking the user's (gigabytes of kernel trees) only costs time.
    env = {"XDG_CACHE_HOME": str(tmp_path / "xdg"), **(env or {})}
    done = run_mkspawn("doctor", "--json", *args, env=env, timeout_s=120)
    return done.returncode, json.loads(done.stdout), done.stderr


def bin_without(tmp_path: Path, *absent: str) -> Path:
    """A PATH directory holding this host's tools (and what they need) except ``absent``."""
    directory = tmp_path / "bin"
    directory.mkdir()
    names = {t.name for t in TOOLS} | {c for t in TOOLS for c in t.companions}
    for name in sorted(names - set(absent)):
        found = shutil.which(name)
        if found is None:
            missing(f"{name} is not installed")
        (directory / name).symlink_to(found)
    return directory


def test_json_schema_and_real_versions(tmp_path: Path) -> None:
    code, report, err = doctor(tmp_path)
    assert code == 0, err
    assert set(report) == {"ok", "tools", "kvm", "cache", "trust", "farm", "missing_packages"}
    tools = {t["name"]: t for t in report["tools"]}
    for tool in TOOLS:
        if tool.optional and shutil.which(tool.name) is None:
            assert tool.name not in tools  # only reported when installed
            continue
        row = tools[tool.name]
        assert set(row) == TOOL_FIELDS
        assert row["package"] == package_of(tool.name)
        if shutil.which(tool.name) is None:
            assert row["usable"] is False and row["problem"] == "not found"
        else:
            assert row["usable"] is True, row
            assert row["version"] and row["version"][0].isdigit()
    assert report["kvm"]["status"] in {"absent", "present, unproven", "present, not accessible to this user"}
    assert report["cache"]["root"].endswith("/mkspawn")
    assert isinstance(report["missing_packages"], list)


def test_a_tool_missing_from_path_names_its_package(tmp_path: Path) -> None:
    path = bin_without(tmp_path, "sbsign", "dpkg-deb")
    code, report, err = doctor(tmp_path, env={"PATH": str(path)})
    assert code == 0, err
    tools = {t["name"]: t for t in report["tools"]}
    assert tools["sbsign"]["usable"] is False and tools["sbsign"]["problem"] == "not found"
    assert tools["sbsign"]["package"] == "sbsigntool"
    # apt-get alone cannot fetch the host kernel: it needs dpkg-deb to unpack it.
    assert tools["apt-get"]["usable"] is False and "dpkg-deb" in tools["apt-get"]["problem"]
    assert report["missing_packages"] == ["dpkg", "sbsigntool"]
    assert report["ok"] is False
    assert tools["gcc"]["usable"] is True
    done = run_mkspawn("doctor", env={"PATH": str(path), "XDG_CACHE_HOME": str(tmp_path)}, timeout_s=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) <= 24  # one screen
    assert any(line.split()[:3] == ["missing", "sbsign", "not"] and "install sbsigntool" in line for line in lines)
    assert lines[-1] == "install: apt-get install dpkg sbsigntool"


def test_a_tool_that_fails_is_present_but_unusable(tmp_path: Path) -> None:
    path = bin_without(tmp_path, "dtc")
    # A dtc that is installed but broken (here: a wrapper around a failing command).
    (path / "dtc").write_text("#!/bin/sh\necho 'dtc: error while loading shared libraries' >&2\nexit 127\n")
    (path / "dtc").chmod(0o755)
    (path / "sh").symlink_to("/bin/sh")
    code, report, err = doctor(tmp_path, env={"PATH": str(path)})
    tools = {t["name"]: t for t in report["tools"]}
    assert tools["dtc"]["usable"] is False and "status 127" in tools["dtc"]["problem"]
    assert tools["dtc"]["path"] == str(path / "dtc")
    assert "device-tree-compiler" in report["missing_packages"]


def test_trust_store_keys_and_a_bad_store(tmp_path: Path) -> None:
    store = tmp_path / "trust"
    store.mkdir()
    done = run_mkspawn("keygen", "-o", tmp_path / "k.pem")
    assert done.returncode == 0, done.stderr
    shutil.copy(tmp_path / "k.pub.pem", store / "k.pub.pem")
    keyid = done.stdout.split()[0]
    code, report, _ = doctor(tmp_path, "--trust", store)
    assert report["trust"]["keys"] == [f"{keyid}  k.pub.pem"] and report["trust"]["problem"] is None
    (store / "junk.pem").write_text("not a key")
    code, report, _ = doctor(tmp_path, "--trust", store)
    assert code == 0 and "junk.pem" in report["trust"]["problem"]
    assert report["ok"] is False
    code, report, _ = doctor(tmp_path, "--trust", tmp_path / "absent")
    assert report["trust"]["exists"] is False


def test_cache_size_is_counted(tmp_path: Path) -> None:
    root = tmp_path / "xdg" / "mkspawn" / "kernel" / "out" / "k"
    root.mkdir(parents=True)
    (root / "image").write_bytes(os.urandom(1 << 20))
    code, report, _ = doctor(tmp_path, env={"XDG_CACHE_HOME": str(tmp_path / "xdg")})
    assert report["cache"]["exists"] is True and report["cache"]["bytes"] >= 1 << 20


@pytest.mark.parametrize(("banner", "version"), [
    ("gcc (Debian 12.2.0-14+deb12u1) 12.2.0", "12.2.0-14+deb12u1"),
    ("GNU Make 4.3", "4.3"),
    ("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)", "7.2.22"),
    ("Version: DTC 1.6.1", "1.6.1"),
    ("\nIntel ACPI Component Architecture\nASL+ Optimizing Compiler/Disassembler version 20200925", "20200925"),
    ("BusyBox v1.35.0 (Debian 1:1.35.0-4+deb12u1+b1) multi-call binary.", "1.35.0"),
    ("usage: frob [options]", None),
])
def test_parse_version(banner: str, version: str | None) -> None:
    assert parse_version(banner) == version
