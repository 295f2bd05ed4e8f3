"""`mkspawn cache status|prune` on a cache of real store entries (no kernel compile)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from mkimage import store
from mkimage.kernel.cache import KernelCache
from tests.conftest import run_mkspawn

DAY = 86400
MIB = 1 << 20


def publish(root: Path, area: str, key: str, size: int, *, age_days: float = 0) -> Path:
    """An entry as a stage publishes it, last used ``age_days`` ago."""
    out = root / area / key
    staging = store.staging_dir(out)
    (staging / "payload").write_bytes(os.urandom(size))
    store.publish_entry(staging, out, {"key": key})
    used = time.time() - age_days * DAY
    os.utime(out, (used, used))
    return out


def cache(root: Path, *args: object) -> tuple[int, Any, str]:
    done = run_mkspawn("cache", *args, "--json", env={"XDG_CACHE_HOME": str(root.parent)})
    return done.returncode, json.loads(done.stdout) if done.stdout else {}, done.stderr


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "xdg" / "mkspawn"


def test_status_counts_kinds_sizes_and_last_use(root: Path) -> None:
    publish(root, "kernel/out", "k1", 2 * MIB, age_days=3)
    publish(root, "kernel/out", "k2", 1 * MIB, age_days=1)
    publish(root, "initramfs/out", "i1", MIB // 2)
    src = KernelCache(root).src_dir("s1") / "tree"
    src.mkdir(parents=True)
    (src / "Makefile").write_bytes(os.urandom(MIB))
    # A patched tree hardlinks its source: its own size is only what the patch changed.
    patched = KernelCache(root).patched_dir("p1") / "tree"
    patched.mkdir(parents=True)
    os.link(src / "Makefile", patched / "Makefile")
    code, report, err = cache(root, "status")
    assert code == 0, err
    kinds = {k["kind"]: k for k in report["kinds"]}
    assert kinds["kernel"]["entries"] == 2 and 3 * MIB <= kinds["kernel"]["bytes"] < 3.2 * MIB
    assert kinds["initramfs"]["entries"] == 1
    assert kinds["source-tree"]["bytes"] >= MIB and kinds["patched-tree"]["bytes"] < MIB // 4
    newest = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - DAY))
    assert kinds["kernel"]["last_use"].startswith(newest)
    assert report["bytes"] >= 4.5 * MIB


def test_a_cache_hit_records_its_use(root: Path) -> None:
    out = publish(root, "initramfs/out", "hit", 1024, age_days=30)
    assert store.load_entry(out, "hit", stage="initramfs") is not None
    assert time.time() - out.stat().st_mtime < 60


def test_prune_keep_days_removes_only_old_entries(root: Path) -> None:
    old = publish(root, "kernel/out", "old", 1024, age_days=40)
    new = publish(root, "kernel/out", "new", 1024, age_days=2)
    code, report, err = cache(root, "prune", "--keep-days", "30")
    assert code == 0, err
    assert [e["path"] for e in report["removed"]] == ["kernel/out/old"]
    assert not old.exists() and new.is_dir()
    assert not any((root / "trash").iterdir())


def test_prune_max_size_removes_least_recently_used_first(root: Path) -> None:
    a = publish(root, "kernel/out", "a", MIB, age_days=5)
    b = publish(root, "initramfs/out", "b", MIB, age_days=3)
    c = publish(root, "kernel/out", "c", MIB, age_days=1)
    code, report, err = cache(root, "prune", "--max-size", "1.5M")
    assert code == 0, err
    assert not a.exists() and not b.exists() and c.is_dir()
    assert report["bytes_after"] <= 1.5 * MIB


def test_prune_never_removes_an_entry_in_use(root: Path) -> None:
    held = publish(root, "kernel/out", "held", MIB, age_days=50)
    fresh = publish(root, "kernel/out", "fresh", MIB)  # a hit just now: its reader may still be copying
    free = publish(root, "initramfs/out", "free", MIB, age_days=40)
    src = KernelCache(root).src_dir("s") / "tree"
    src.mkdir(parents=True)
    os.utime(src.parent, (time.time() - 60 * DAY,) * 2)
    # A build in progress reads a source tree it does not lock.
    with store.locked(KernelCache(root).lock_path("build-held"), "test"):
        code, report, err = cache(root, "prune", "--max-size", "0")
    assert code == 0, err
    assert held.is_dir() and fresh.is_dir() and src.is_dir() and not free.exists()
    assert sorted(e["path"] for e in report["in_use"]) == [
        "kernel/out/fresh", "kernel/out/held", "kernel/src/s"]
    code, report, err = cache(root, "prune", "--max-size", "0")  # the build is done
    assert not held.exists() and not src.parent.exists() and fresh.is_dir()


def test_prune_without_limits_removes_leftovers_only(root: Path) -> None:
    kept = publish(root, "kernel/out", "kept", 1024, age_days=400)
    crashed = store.staging_dir(root / "initramfs/out/crashed")
    os.utime(crashed, (time.time() - DAY,) * 2)
    busy = store.staging_dir(root / "initramfs/out/busy")
    os.utime(busy, (time.time() - DAY,) * 2)
    (root / "trash" / "kernel-x-1").mkdir(parents=True)  # a prune killed while deleting
    with store.locked(root / "locks" / "initramfs-busy.lock", "test"):
        code, report, err = cache(root, "prune")
    assert code == 0, err
    assert kept.is_dir() and busy.is_dir() and not crashed.exists()
    assert not any((root / "trash").iterdir())


def test_dry_run_removes_nothing(root: Path) -> None:
    old = publish(root, "kernel/out", "old", 1024, age_days=40)
    code, report, _err = cache(root, "prune", "--keep-days", "1", "--dry-run")
    assert code == 0 and len(report["removed"]) == 1 and old.is_dir()


@pytest.mark.parametrize("size", ["1x", "G", "-5M"])
def test_bad_size_is_a_usage_error(root: Path, size: str) -> None:
    done = run_mkspawn("cache", "prune", "--max-size", size, env={"XDG_CACHE_HOME": str(root.parent)})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "[bad-size]" in done.stderr and "--max-size" in done.stderr


def test_status_of_an_empty_cache(root: Path) -> None:
    code, report, err = cache(root, "status")
    assert code == 0, err
    assert report["bytes"] == 0
