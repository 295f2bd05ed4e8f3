"""The initramfs cache: a rebuild with unchanged inputs reuses the packed, compressed file
(checked against its recorded digest), any changed input misses, and cached and uncached
builds give the same bytes, for the initramfs and the whole bundle."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from mkimage.initramfs.build import build_initramfs
from mkimage.pipeline import build_bundle
from mkimage.recipe.load import load_recipe
from mkimage.recipe.model import Compression, FileItem, InitramfsSpec, TreeItem

EPOCH = 1_600_000_000


def spec_for(tree: Path, compression: Compression = Compression.ZSTD) -> InitramfsSpec:
    return InitramfsSpec(compression=compression, command="echo cached", trees=[TreeItem(tree, "/srv")],
                         files=[FileItem(tree / "a", "/etc/a.conf", 0o600)])


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    (root / "a").write_bytes(b"a\n" * 5000)
    (root / "sub" / "b").write_bytes(bytes(range(256)) * 300)
    (root / "link").symlink_to("a")
    return root


def entries(cache: Path) -> list[Path]:
    return sorted((cache / "initramfs" / "out").iterdir())


def test_a_rebuild_with_unchanged_inputs_is_served_from_the_entry(tmp_path: Path, tree: Path) -> None:
    cache = tmp_path / "cache"
    first = build_initramfs(spec_for(tree), tmp_path / "1", source_date_epoch=EPOCH, cache_root=cache)
    [entry] = entries(cache)
    published = (entry.stat().st_ino, (entry / "entry.json").stat().st_mtime_ns)
    second = build_initramfs(spec_for(tree), tmp_path / "2", source_date_epoch=EPOCH, cache_root=cache)
    assert entries(cache) == [entry]
    assert (entry.stat().st_ino, (entry / "entry.json").stat().st_mtime_ns) == published  # not written again
    assert (tmp_path / "2").read_bytes() == (tmp_path / "1").read_bytes()
    assert (second.size, second.sha256, second.inputs, second.tools, second.early_size) == (
        first.size, first.sha256, first.inputs, first.tools, first.early_size)
    assert {name for name, _ in second.inputs} >= {str(tree / "a"), str(tree / "sub" / "b")}


def test_a_scratch_output_is_linked_to_the_entry_and_a_durable_one_copied(tmp_path: Path, tree: Path) -> None:
    """The pipeline's initrd lives in its temp work dir (durable=False): a hit costs a
    link, not a copy and an fsync; `mkspawn initramfs -o` keeps a file of its own."""
    cache = tmp_path / "cache"
    first = build_initramfs(spec_for(tree), tmp_path / "miss", source_date_epoch=EPOCH, cache_root=cache,
                            durable=False)
    [entry] = entries(cache)
    scratch = build_initramfs(spec_for(tree), tmp_path / "hit", source_date_epoch=EPOCH, cache_root=cache,
                              durable=False)
    durable = build_initramfs(spec_for(tree), tmp_path / "kept", source_date_epoch=EPOCH, cache_root=cache)
    assert first.sha256 == scratch.sha256 == durable.sha256
    assert (tmp_path / "hit").stat().st_ino == (entry / "initrd").stat().st_ino
    assert (tmp_path / "kept").stat().st_ino != (entry / "initrd").stat().st_ino
    assert (tmp_path / "kept").read_bytes() == (tmp_path / "hit").read_bytes() == (tmp_path / "miss").read_bytes()


@pytest.mark.parametrize("change", ["content", "mode", "epoch", "compression"])
def test_any_changed_input_misses_and_matches_an_uncached_build(tmp_path: Path, tree: Path, change: str) -> None:
    cache = tmp_path / "cache"
    build_initramfs(spec_for(tree), tmp_path / "before", source_date_epoch=EPOCH, cache_root=cache)
    spec, epoch = spec_for(tree), EPOCH
    if change == "content":
        (tree / "sub" / "b").write_bytes(bytes(range(256))[::-1] * 300)  # same size, new bytes
    elif change == "mode":
        (tree / "sub" / "b").chmod(0o700)
    elif change == "epoch":
        epoch += 1
    else:
        spec = spec_for(tree, Compression.GZIP)
    cached = build_initramfs(spec, tmp_path / "cached", source_date_epoch=epoch, cache_root=cache)
    plain = build_initramfs(spec, tmp_path / "plain", source_date_epoch=epoch)
    assert len(entries(cache)) == 2
    assert (tmp_path / "cached").read_bytes() == (tmp_path / "plain").read_bytes()
    assert (tmp_path / "cached").read_bytes() != (tmp_path / "before").read_bytes()
    assert cached.inputs == plain.inputs


def test_a_damaged_entry_is_reported_and_rebuilt(tmp_path: Path, tree: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    good = build_initramfs(spec_for(tree), tmp_path / "good", source_date_epoch=EPOCH, cache_root=cache)
    [entry] = entries(cache)
    cached = bytearray((entry / "initrd").read_bytes())
    cached[len(cached) // 2] ^= 0x40
    (entry / "initrd").write_bytes(bytes(cached))
    with caplog.at_level(logging.WARNING, logger="mkspawn"):
        again = build_initramfs(spec_for(tree), tmp_path / "again", source_date_epoch=EPOCH, cache_root=cache)
    assert "initramfs: cache entry" in caplog.text and "damaged" in caplog.text
    assert again.sha256 == good.sha256
    assert (tmp_path / "again").read_bytes() == (tmp_path / "good").read_bytes()
    assert (entry / "initrd").read_bytes() == (tmp_path / "good").read_bytes()  # repaired


def test_cached_and_uncached_bundles_are_byte_identical(tmp_path: Path, synthetic_kernel: Path, tree: Path) -> None:
    recipe_path = tmp_path / "spawn.toml"
    recipe_path.write_text(f"""
[metadata]
name = "cached"
version = "1.0.0"
source_date_epoch = {EPOCH}
[kernel]
image = "{synthetic_kernel}"
cmdline = "console=ttyS0"
[initramfs]
busybox = true
compression = "zstd"
command = "echo cached"
trees = [{{ src = "{tree}", dst = "/srv" }}]
""")
    recipe = load_recipe(recipe_path)
    cache = tmp_path / "cache"
    outs = {}
    for label, root in (("miss", cache), ("hit", cache), ("uncached", tmp_path / "fresh")):
        outs[label] = build_bundle(recipe, tmp_path / f"{label}.mkb", cache_root=root).path.read_bytes()
    assert len(entries(cache)) == 1
    assert outs["miss"] == outs["hit"] == outs["uncached"]


def test_an_edited_writer_misses(tmp_path: Path, tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer's and compressors' sources are part of the key: a developer's edit to
    them is never answered with bytes the old code made."""
    cache = tmp_path / "cache"
    build_initramfs(spec_for(tree), tmp_path / "1", source_date_epoch=EPOCH, cache_root=cache)
    newc = sys.modules["mkimage.initramfs.newc"]
    edited = tmp_path / "newc.py"
    edited.write_text(Path(str(newc.__file__)).read_text() + "\n# edited\n")
    monkeypatch.setattr(newc, "__file__", str(edited))
    build_initramfs(spec_for(tree), tmp_path / "2", source_date_epoch=EPOCH, cache_root=cache)
    assert len(entries(cache)) == 2
