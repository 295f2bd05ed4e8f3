"""A kernel that passed the loader contract is remembered by its digest, so a rebuild does
not inflate its payload again; any other bytes, profile or command line are checked."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkimage.errors import MkspawnError
from mkimage.pipeline import build_bundle
from mkimage.recipe.load import load_recipe
from tests.conftest import prebuilt_recipe

EPOCH = 1_700_000_000


def recipe_for(directory: Path, kernel: bytes, cmdline: str = "console=ttyS0") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "bzImage").write_bytes(kernel)
    return prebuilt_recipe(directory, "bzImage", name="memo", cmdline=cmdline, epoch=EPOCH)


def memos(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "contract").iterdir())


def test_a_pass_is_remembered_and_other_inputs_are_checked_again(tmp_path: Path, synthetic_kernel: Path) -> None:
    cache = tmp_path / "cache"
    good = synthetic_kernel.read_bytes()
    recipe = load_recipe(recipe_for(tmp_path / "a", good))
    first = build_bundle(recipe, tmp_path / "1.mkb", cache_root=cache)
    [memo] = memos(cache)
    again = build_bundle(recipe, tmp_path / "2.mkb", cache_root=cache)
    assert memos(cache) == [memo]
    assert again.path.read_bytes() == first.path.read_bytes()

    build_bundle(load_recipe(recipe_for(tmp_path / "b", good, "console=ttyS1")), tmp_path / "3.mkb", cache_root=cache)
    assert len(memos(cache)) == 2

    with pytest.raises(MkspawnError) as refused:
        build_bundle(load_recipe(recipe_for(tmp_path / "c", good[: len(good) - 512])), tmp_path / "4.mkb",
                     cache_root=cache)
    assert refused.value.code == "contract-failed"
    assert len(memos(cache)) == 2
    assert not (tmp_path / "4.mkb").exists()
