"""`mkspawn reproduce`: the proof that builds are path independent.  A bundle built in one
directory is rebuilt from its provenance in another, with a fresh cache, and must match
component by component; a recipe or input that differs is named before anything is built."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mkimage.reproduce import _compare, _read_recorded
from tests.bundle.evidence_helpers import build, write_recipe_dir
from tests.conftest import REPO, missing, needs_tool, without_progress
from tests.conftest import run_mkspawn as mkspawn


def one_line(done: subprocess.CompletedProcess[str], status: int) -> str:
    assert done.returncode == status, (done.stdout, done.stderr)
    lines = without_progress(done.stderr)
    assert len(lines) == 1 and "Traceback" not in done.stderr, lines
    return lines[0]


@pytest.fixture
def original(tmp_path: Path, synthetic_kernel: Path) -> Path:
    out = tmp_path / "original.mkb"
    build(tmp_path / "first" / "checkout", synthetic_kernel, out)
    return out


def test_a_bundle_rebuilt_elsewhere_from_its_provenance_matches(tmp_path: Path, synthetic_kernel: Path,
                                                                 original: Path) -> None:
    elsewhere = write_recipe_dir(tmp_path / "second" / "user" / "tree", synthetic_kernel).parent
    (elsewhere / "spawn.toml").unlink()  # the recorded recipe is all reproduce needs
    cache = tmp_path / "fresh-cache"
    done = mkspawn("reproduce", original, "--recipe-dir", elsewhere, "--cache-dir", cache, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    paths = [c["path"] for c in report["components"]]
    assert {"bzImage", "initrd", "config", "cmdline", "sbom.cdx.json", "manifest.json",
            "provenance.dsse.json"} <= set(paths)
    assert all(c["equal"] for c in report["components"])
    assert not list(elsewhere.glob(".mkspawn-reproduce-*")), "the recorded recipe's temp file is removed"


def test_a_given_recipe_that_resolves_the_same_reproduces(tmp_path: Path, synthetic_kernel: Path,
                                                          original: Path) -> None:
    recipe = write_recipe_dir(tmp_path / "other", synthetic_kernel)
    renamed = recipe.with_name("renamed.toml")
    recipe.rename(renamed)
    # Spelled differently (comments, key order) and named differently: the same resolved recipe.
    renamed.write_text("# a comment\n" + renamed.read_text())
    done = mkspawn("reproduce", original, "--recipe", renamed)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "DIFFERS" not in done.stdout and "equal    initrd" in done.stdout


def test_a_differing_recipe_is_named_before_anything_is_built(tmp_path: Path, synthetic_kernel: Path,
                                                              original: Path) -> None:
    recipe = write_recipe_dir(tmp_path / "other", synthetic_kernel)
    recipe.write_text(recipe.read_text().replace('"echo evidence"', '"echo changed"'))
    cache = tmp_path / "cache"
    line = one_line(mkspawn("reproduce", original, "--recipe", recipe, "--cache-dir", cache), 3)
    assert "initramfs.command" in line and '"echo evidence"' in line and "[recipe-differs]" in line
    assert not cache.exists(), "nothing was built"


def test_a_changed_input_file_is_named_before_anything_is_built(tmp_path: Path, synthetic_kernel: Path,
                                                                original: Path) -> None:
    elsewhere = write_recipe_dir(tmp_path / "other", synthetic_kernel).parent
    (elsewhere / "motd").write_text("changed\n")
    cache = tmp_path / "cache"
    line = one_line(mkspawn("reproduce", original, "--recipe-dir", elsewhere, "--cache-dir", cache), 3)
    assert "motd" in line and "[input-differs]" in line
    assert not cache.exists()


def test_a_differing_rebuild_names_initrd_files_and_config_options(tmp_path: Path, synthetic_kernel: Path,
                                                                   original: Path) -> None:
    other = tmp_path / "other.mkb"
    directory = tmp_path / "changed"
    write_recipe_dir(directory, synthetic_kernel)
    build(directory, synthetic_kernel, other)  # same recipe...
    (directory / "motd").write_text("changed\n")  # ...but another motd and config
    (directory / "config").write_text((directory / "config").read_text().replace("CONFIG_RD_GZIP=y",
                                                                                  "# CONFIG_RD_GZIP is not set"))
    from mkimage.pipeline import build_bundle
    from mkimage.recipe.load import load_recipe

    build_bundle(load_recipe(directory / "spawn.toml"), other, cache_root=directory / "cache")
    results = {r.path: r for r in _compare(original, other, _read_recorded(original))}
    assert results["bzImage"].equal and results["cmdline"].equal
    assert not results["initrd"].equal and "etc/motd (contents)" in results["initrd"].detail
    assert "init" not in results["initrd"].detail.replace("etc/motd", "")
    assert not results["config"].equal and "CONFIG_RD_GZIP: y → n" in results["config"].detail
    assert not results["manifest.json"].equal and "components[" in results["manifest.json"].detail


def test_a_bundle_without_provenance_cannot_be_reproduced(tmp_path: Path) -> None:
    from tests.bundle.forge import write_signed

    bare = write_signed(tmp_path / "bare.mkb", evidence=False)
    line = one_line(mkspawn("reproduce", bare), 3)
    assert "provenance.dsse.json" in line and "[missing-provenance]" in line


@pytest.mark.slow
def test_the_compiled_demo_kernel_reproduces_from_a_fresh_cache(tmp_path: Path) -> None:
    """A real kernel compile (minutes): the demo recipe's kernel, built from source and
    patched, rebuilt with an empty cache must give the same bzImage, config and bundle."""
    needs_tool("make", "gcc", "busybox")
    if not Path("/usr/src/linux-source-6.12.tar.xz").is_file():
        missing("linux-source-6.12 is not installed")
    recipes = tmp_path / "checkout" / "recipes"
    shutil.copytree(REPO / "recipes", recipes)
    shutil.copytree(REPO / "kernel", recipes.parent / "kernel")
    out = tmp_path / "demo.mkb"
    done = mkspawn("build", recipes / "demo.toml", "-o", out, timeout_s=3600)  # the shared cache: usually a hit
    assert done.returncode == 0, done.stderr
    fresh = tmp_path / "fresh-cache"
    done = mkspawn("reproduce", out, "--recipe-dir", REPO / "recipes", "--cache-dir", fresh, "--json",
                   timeout_s=3600)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert all(c["equal"] for c in report["components"]), report
    assert any(fresh.glob("kernel/out/*")), "the kernel really was compiled in the fresh cache"
