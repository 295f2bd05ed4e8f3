"""The examples in recipes/: every file loads, each ABI profile has an instance example,
the mk2 trees are what the kernel reads, and the buildable ones build (slow: they use the
compiled demo kernel, a cache hit once any test or setup.sh built it)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from mkimage.recipe.load import load_recipe
from mkimage.recipe.model import AbiProfile
from mkimage.recipe.system import is_system_file, load_system
from tests.conftest import missing
from tests.conftest import run_mkspawn as mkspawn

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
EXAMPLES = sorted(RECIPES.glob("*.toml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_loads(path: Path) -> None:
    if not Path("/usr/src/linux-source-6.12.tar.xz").is_file():
        missing("linux-source-6.12 is not installed (setup.sh installs it)")
    if is_system_file(path):
        system = load_system(path)
        assert len(system.spawns) >= 3 and system.warnings == ()
    else:
        load_recipe(path)


def test_each_profile_has_an_instance_example() -> None:
    profiles = {load_recipe(p).instance.profile for p in EXAMPLES if not is_system_file(p)
                if "[instance]" in p.read_text()}
    assert profiles >= {AbiProfile.V2, AbiProfile.MK2, AbiProfile.MK_MASTER}


def test_mk2_system_trees() -> None:
    """The mk2 host's baseline has both NUMA chunks and both devices; each spawn's overlay
    has only its own device, and the counted spawn lands on the core the others leave."""
    baseline = mkspawn("dt", RECIPES / "system-mk2.toml", "--baseline")
    assert baseline.returncode == 0, baseline.stderr
    for text in ("memory@0 {", "memory@1 {", "numa-node-id = <0x1>;", "nic0 {", "nvme0 {",
                 'eth0 = "/resources/devices/nic0";'):
        assert text in baseline.stdout
    assert "memory-base" not in baseline.stdout
    store = mkspawn("dt", RECIPES / "system-mk2.toml", "--spawn", "store").stdout
    assert "nvme0 {" in store and "nic0" not in store and "numa-nodes = <0x1>;" in store
    calc = mkspawn("dt", RECIPES / "system-mk2.toml", "--spawn", "calc").stdout
    assert "cpus = /bits/ 64 <0x4 0x5>;" in calc
    done = mkspawn("dt", RECIPES / "system-mk2.toml")
    assert done.returncode == 2 and "--baseline or --spawn NAME (net, store, calc)" in done.stderr


@pytest.mark.slow
def test_example_system_builds_signed_and_verifies(tmp_path: Path) -> None:
    out = tmp_path / "system"
    done = mkspawn("build", RECIPES / "system-demo.toml", "-o", out, "--key", KEYS / "test-ed25519.pem", "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert [s["instance"] for s in summary["spawns"]] == ["net", "store", "calc"]
    assert len(summary["kernels_used"]) == 1  # three spawns, one kernel build
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(KEYS / "test-ed25519.pub.pem", trust)
    done = mkspawn("verify", out, "--trust", trust)
    assert done.returncode == 0, done.stderr


@pytest.mark.slow
def test_v2_example_builds_and_verifies(tmp_path: Path) -> None:
    out = tmp_path / "spawn-v2.mkb"
    assert mkspawn("build", RECIPES / "spawn-v2.toml", "-o", out, "--key", KEYS / "test-ed25519.pem").returncode == 0
    trust = tmp_path / "trust"
    trust.mkdir()
    shutil.copy(KEYS / "test-ed25519.pub.pem", trust)
    done = mkspawn("verify", out, "--trust", trust)
    assert done.returncode == 0, done.stderr
    assert "instance:       demo0 (id 1)" in mkspawn("inspect", out).stdout


def test_systems_doc_settings_match_the_model() -> None:
    from mkimage.recipe.system import settings_markdown

    doc = (RECIPES.parent / "docs" / "systems.md").read_text(encoding="utf-8")
    assert doc.endswith(settings_markdown()), "docs/systems.md settings are stale: regenerate from settings_markdown()"


def test_builtin_system_file_is_a_system() -> None:
    """Regression: `builtin:recipes/system-*.toml` was read as a path before the builtin:
    prefix was resolved, so it was not detected as a system and dt refused it as a recipe."""
    assert is_system_file(Path("builtin:recipes/system-demo.toml"))
    assert not is_system_file(Path("builtin:recipes/demo.toml"))
    assert not is_system_file(Path("builtin:recipes/no-such.toml"))
    done = mkspawn("dt", "builtin:recipes/system-mk2.toml", "--spawn", "calc")
    assert done.returncode == 0, done.stderr
    assert "cpus = /bits/ 64 <0x4 0x5>;" in done.stdout
