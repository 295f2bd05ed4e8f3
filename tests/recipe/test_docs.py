"""docs/recipes.md and the model have one source of truth."""

from __future__ import annotations

from mkimage.recipe.docs import DOC_PATH, all_rows, render_markdown, schema


def test_committed_reference_matches_the_model() -> None:
    assert DOC_PATH.read_text(encoding="utf-8") == render_markdown(), (
        "docs/recipes.md is stale: run `python -m mkimage.recipe.docs`"
    )


def test_every_setting_is_documented_with_help() -> None:
    rows = all_rows()
    assert rows
    for row in rows:
        assert row.setting.help.strip(), row.key
        assert f"`{row.key}`" in render_markdown()
    assert set(schema()) == {row.key for row in rows}
