"""Per ABI profile, the generated trees equal hand-written trees from multikernel-abi.md §7."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkimage.devicetree.build import build_devicetree
from mkimage.recipe.model import AbiProfile
from tests.conftest import needs_tool
from tests.devicetree.dt_helpers import compile_dts, decompile_sorted, load, recipe_text

GOLDEN = Path(__file__).parent / "golden"
PROFILES = [p for p in AbiProfile if p is not AbiProfile.NONE]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("kind", ["instance", "baseline"])
def test_generated_tree_matches_hand_written_golden(tmp_path: Path, profile: AbiProfile, kind: str) -> None:
    needs_tool("dtc")
    recipe = load(tmp_path, recipe_text(profile.value))
    build_devicetree(recipe, tmp_path / "work")
    suffix = ".dtbo" if kind == "instance" and profile is not AbiProfile.V2 else ".dtb"
    # Compiled for every profile, though a v2 bundle carries its baseline as source only.
    generated = tmp_path / "work" / "devicetree" / f"{kind}{suffix}"
    golden = compile_dts(GOLDEN / f"{profile.value}-{kind}.dts", tmp_path / f"golden{suffix}")
    assert decompile_sorted(generated) == decompile_sorted(golden)


@pytest.mark.parametrize("profile", PROFILES)
def test_bundled_dts_compiles_to_the_bundled_blob(tmp_path: Path, profile: AbiProfile) -> None:
    needs_tool("dtc")
    recipe = load(tmp_path, recipe_text(profile.value))
    files = build_devicetree(recipe, tmp_path / "work")
    blobs = [f for f in files if f.role.value in ("dtb", "dtbo")]
    # v2: the instance tree is the one DTB a host takes, so the bundle has no baseline blob.
    assert [b.path.stem for b in blobs] == (["instance"] if profile is AbiProfile.V2 else ["instance", "baseline"])
    for blob in blobs:
        source = blob.path.with_suffix(".dts")
        again = compile_dts(source, tmp_path / ("again" + blob.path.suffix))
        assert again.read_bytes() == blob.path.read_bytes()
