"""mkspawn installed from its wheel, run far from any checkout.

The wheel is built from this checkout and installed into a fresh venv (dependencies from
pip as a user gets them); every command then runs from an empty temp dir with a clean
environment, so a lookup relative to the checkout fails here instead of on a user's
machine.  The same recipe built by the editable install and by the wheel must give the
same bundle bytes: provenance names mkspawn's own files the same way from both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mkimage import assets
from mkimage.context import default_cache_root
from tests.conftest import REPO, needs_tool
from tests.conftest import run_mkspawn as editable_mkspawn

EPOCH = 1_700_000_000
RECIPE = f"""
[metadata]
name = "packaged"
version = "1.0.0"
source_date_epoch = {EPOCH}
[kernel]
image = "bzImage"
cmdline = "console=ttyS0"
[initramfs]
busybox = true
command = "echo packaged"
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(REPO)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (path,) = out.glob("mkspawn-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory, wheel: Path) -> Path:
    root = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    done = subprocess.run([root / "bin" / "python", "-m", "pip", "install", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return root


def installed(venv: Path, *args: object, cwd: Path, module: bool = False) -> subprocess.CompletedProcess[str]:
    """The wheel's mkspawn in a clean environment: no PYTHONPATH, run from ``cwd``."""
    env = {"PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "HOME": str(Path.home()),
           "XDG_CACHE_HOME": str(default_cache_root().parent), "XDG_CONFIG_HOME": "/nonexistent/mkspawn-test-config"}
    argv = [venv / "bin" / "python", "-m", "mkimage"] if module else [venv / "bin" / "mkspawn"]
    return subprocess.run([*map(str, argv), *map(str, args)], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=1800)


def test_wheel_carries_every_shipped_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for top in assets.SHIPPED_DIRS:
        for path in sorted((REPO / top).rglob("*")):
            if path.is_file():
                assert f"mkimage/_assets/{top}/{path.relative_to(REPO / top).as_posix()}" in names
    assert {"mkimage/qemu/probe.sh", "mkimage/qemu/host-init"} <= names
    assert not any(n.startswith(("kernel/", "recipes/", "initramfs/", "tests/")) for n in names)


def test_installed_package_runs_outside_the_checkout(venv: Path, tmp_path: Path) -> None:
    where = subprocess.run([venv / "bin" / "python", "-c", "import mkimage; print(mkimage.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert not Path(where.stdout.strip()).is_relative_to(REPO)
    assert installed(venv, "--version", cwd=tmp_path).stdout.startswith("mkspawn, version ")
    assert installed(venv, "--version", cwd=tmp_path, module=True).returncode == 0
    shown = installed(venv, "recipe", "show", "builtin:recipes/qemu-host.toml", "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    fragments = json.loads(shown.stdout)["kernel"]["fragments"]
    assert [Path(f).name for f in fragments] == ["spawn-minimal.config", "kexec-host.config"]
    assert all(Path(f).is_file() and not Path(f).is_relative_to(REPO) for f in fragments)


def test_unknown_builtin_is_one_recipe_line(venv: Path, tmp_path: Path) -> None:
    (tmp_path / "r.toml").write_text('[metadata]\nname = "x"\nversion = "1"\n[kernel]\n'
                                     'image = "builtin:kernel/no-such.config"\n')
    done = installed(venv, "recipe", "show", "r.toml", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr == ("mkspawn: error: r.toml:5: [kernel] image: builtin:kernel/no-such.config: "
                           "mkspawn ships no such file [no-such-builtin]\n")


def test_wheel_and_editable_builds_are_byte_identical(venv: Path, tmp_path: Path, synthetic_kernel: Path) -> None:
    needs_tool("busybox")
    bundles = []
    for name in ("editable", "wheel"):
        work = tmp_path / name
        work.mkdir()
        (work / "bzImage").write_bytes(synthetic_kernel.read_bytes())
        (work / "spawn.toml").write_text(RECIPE)
        run = editable_mkspawn if name == "editable" else lambda *a, cwd: installed(venv, *a, cwd=cwd)
        done = run("build", "spawn.toml", "-o", "spawn.mkb", cwd=work)
        assert done.returncode == 0, done.stderr
        bundles.append((work / "spawn.mkb").read_bytes())
    assert b'"mkspawn:initramfs/init.sh"' in bundles[0]
    assert bundles[0] == bundles[1]


@pytest.mark.slow
def test_installed_wheel_builds_and_boots_the_builtin_demo(venv: Path, tmp_path: Path) -> None:
    needs_tool("busybox", "qemu-system-x86_64", "make", "gcc")
    # check verifies before it boots, so the bundle is signed by a key the check trusts.
    keyed = installed(venv, "keygen", "-o", "keys/ci.pem", cwd=tmp_path)
    assert keyed.returncode == 0, keyed.stderr
    (tmp_path / "trust").mkdir()
    (tmp_path / "keys" / "ci.pub.pem").rename(tmp_path / "trust" / "ci.pub.pem")
    built = installed(venv, "build", "builtin:recipes/demo.toml", "-o", "demo.mkb", "--key", "keys/ci.pem",
                      cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    static = installed(venv, "check", "--static", "demo.mkb", cwd=tmp_path)
    assert static.returncode == 0, static.stderr
    booted = installed(venv, "check", "demo.mkb", "--recipe", "builtin:recipes/demo.toml", "--trust", "trust",
                       "--json", cwd=tmp_path)
    assert booted.returncode == 0, booted.stderr
    result = json.loads(booted.stdout)
    assert result["ok"] and result["expect_matched"]
