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


def test_every_type_has_a_readable_name() -> None:
    text = render_markdown()
    assert "<class" not in text and "typing." not in text
    assert "| `bundle.key` | path (optional) |" in text
    assert all("<" not in entry["type"] for entry in schema().values())


def test_item_tables_document_their_keys() -> None:
    text = render_markdown()
    assert '| `initramfs.files[].mode` | permission bits (0o755 or "0755") (optional) |' in text
    assert "| `initramfs.nodes[].major` | integer (optional) | unset | Device major number, 0..4095" in text
