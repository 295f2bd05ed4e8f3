"""Patch series: order, digests, quilt series files, and applying onto a hardlinked copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkimage.errors import InputError, ToolError
from mkimage.kernel.cache import KernelCache
from mkimage.kernel.patches import parse_series, patched_tree, read_series
from tests.conftest import needs_tool

REPO = Path(__file__).resolve().parents[2]

GOOD = """\
From: t <t@t>
Subject: [PATCH] change b

---
 f.c | 2 +-

--- a/f.c
+++ b/f.c
@@ -1,3 +1,3 @@
 a
-b
+B
 c
--
2.39.2
"""

# Context that is not in the file: hunk #1 cannot apply.
BROKEN = """\
--- a/f.c
+++ b/f.c
@@ -1,3 +1,3 @@
 x
-y
+Y
 z
"""


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    src = tmp_path / "src" / "tree"
    src.mkdir(parents=True)
    (src / "f.c").write_text("a\nb\nc\n")
    (src / "g.c").write_text("untouched\n")
    return src


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_mbox_patch_applies_to_a_copy_and_leaves_the_source_alone(tmp_path: Path, tree: Path) -> None:
    needs_tool("patch", "cp")
    series = read_series([_write(tmp_path / "0001.patch", GOOD)], None)
    patched = patched_tree(KernelCache(tmp_path / "cache"), tree, "srcdigest", series)
    assert (patched / "f.c").read_text() == "a\nB\nc\n"
    assert (tree / "f.c").read_text() == "a\nb\nc\n", "patch must not write through the hardlink"
    assert (patched / "g.c").stat().st_ino == (tree / "g.c").stat().st_ino, "unpatched files stay hardlinked"
    assert not list(patched.rglob("*.orig")) and not list(patched.rglob("*.rej"))
    assert patched_tree(KernelCache(tmp_path / "cache"), tree, "srcdigest", series) == patched


def test_failing_patch_names_file_and_hunk_and_leaves_nothing(tmp_path: Path, tree: Path) -> None:
    needs_tool("patch", "cp")
    good = _write(tmp_path / "0001-good.patch", GOOD)
    bad = _write(tmp_path / "0002-broken.patch", BROKEN)
    cache = KernelCache(tmp_path / "cache")
    with pytest.raises(ToolError) as e:
        patched_tree(cache, tree, "srcdigest", read_series([good, bad], None))
    assert e.value.code == "patch-failed"
    assert str(bad) in e.value.message
    assert "f.c: hunk #1 FAILED at line 1" in e.value.message
    assert not list((tmp_path / "cache" / "kernel" / "patched").glob("*/*")), "no half-patched tree is kept"


def test_series_file_order_strip_and_comments(tmp_path: Path) -> None:
    d = tmp_path / "patches"
    d.mkdir()
    _write(d / "one.patch", GOOD)
    _write(d / "two.patch", BROKEN)
    series = _write(d / "series", "# our series\ntwo.patch -p0\n\none.patch  # trailing comment\n")
    assert parse_series(series) == [(d / "two.patch", 0), (d / "one.patch", 1)]


def test_series_names_a_missing_patch_with_its_line(tmp_path: Path) -> None:
    series = _write(tmp_path / "series", "gone.patch\n")
    with pytest.raises(InputError, match=r"series:1: no such patch"):
        parse_series(series)


def test_series_digest_covers_content_and_order_not_names(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.patch", GOOD)
    b = _write(tmp_path / "b.patch", BROKEN)
    renamed = _write(tmp_path / "renamed.patch", GOOD)
    assert read_series([a, b], None).digest == read_series([renamed, b], None).digest
    assert read_series([a, b], None).digest != read_series([b, a], None).digest
    assert read_series([a], None).digest != read_series([b], None).digest


def test_patches_and_series_together_are_refused(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.patch", GOOD)
    with pytest.raises(InputError, match="patches and series"):
        read_series([a], _write(tmp_path / "series", "a.patch\n"))


def test_our_patch_is_a_plain_p1_mbox() -> None:
    """The shipped patch names init/main.c and adds the boot marker line."""
    text = (REPO / "kernel" / "patches" / "0001-mkspawn-boot-banner.patch").read_text()
    assert "--- a/init/main.c\n+++ b/init/main.c\n" in text
    assert '+\tpr_info("mkspawn: spawn kernel built by mkspawn\\n");' in text
