"""Benchmark the kernel stage against plain make on the same tree and config.

    python3 bench/kernel.py [--recipe recipes/minimal.toml] [--skip-cold] [--runs N]

1. Cold build: ``build_kernel`` with an empty output cache and an empty ccache (the
   extracted source is reused, as it is after the first build on a machine) against
   ``make tinyconfig`` + merge_config.sh + ``olddefconfig`` + ``make -j<cores> bzImage``
   of the very tree and fragments it used.  Goal: ≤ 1.03×.  Also run with ccache off.
2. No-op: ``build_kernel`` on a cached key against ``make -j<cores> bzImage`` in the
   already built plain O= directory.  Goal: ≤ 0.2×.
3. No-op bundle: the whole CLI, ``mkspawn build recipes/demo.toml -o X`` (a recipe on the
   same kernel) with every stage cached, against the same no-op make.  Goal: ≤ 0.1× and
   ≤ 0.3 s.

With ``--skip-cold`` the plain O= directory is kept under the cache (bench/plain-make),
so later runs only pay make's own no-op.

Timings on a shared 2-core machine are noisy; run it when nothing else is busy.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.timing import Timing, timed  # noqa: E402 - after the sys.path line above
from mkimage.kernel.build import build_kernel, kbuild_env  # noqa: E402 - after the sys.path line above
from mkimage.kernel.cache import KernelCache  # noqa: E402 - after the sys.path line above
from mkimage.kernel.patches import patched_tree, read_series  # noqa: E402 - after the sys.path line above
from mkimage.kernel.source import materialise_source, source_identity  # noqa: E402 - after the sys.path line above
from mkimage.recipe.load import load_recipe  # noqa: E402 - after the sys.path line above
from mkimage.recipe.model import KernelSpec  # noqa: E402 - after the sys.path line above

CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mkspawn"


def plain_make(spec: KernelSpec, tree: Path, build_dir: Path, jobs: int) -> Timing:
    """What a developer would type, with the same reproducibility variables."""
    env = {**os.environ, **kbuild_env(0)}
    make = ["make", "-C", str(tree), f"O={build_dir}", "ARCH=x86_64"]

    def go() -> None:
        subprocess.run([*make, spec.base.value], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(
            [str(tree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(build_dir), str(build_dir / ".config"),
             *map(str, spec.fragments)],
            env={**env, "ARCH": "x86_64"}, check=True, stdout=subprocess.DEVNULL, cwd=tree,
        )
        subprocess.run([*make, "olddefconfig"], env=env, check=True, stdout=subprocess.DEVNULL)
        subprocess.run([*make, f"-j{jobs}", "bzImage"], env=env, check=True, stdout=subprocess.DEVNULL)

    return timed(go)


def noop_make(tree: Path, build_dir: Path, jobs: int) -> Timing:
    env = {**os.environ, **kbuild_env(0)}
    argv = ["make", "-C", str(tree), f"O={build_dir}", "ARCH=x86_64", f"-j{jobs}", "bzImage"]
    return timed(lambda: subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL))


def seeded_cache(work: Path, spec: KernelSpec) -> Path:
    """A fresh cache root that already holds the extracted source (hardlinked), nothing else."""
    assert spec.source is not None
    identity = source_identity(spec.source, cache_root=CACHE_ROOT)
    src = materialise_source(spec.source, identity, cache_root=CACHE_ROOT, mirrors=spec.mirrors)
    root = work / "cache"
    dest = KernelCache(root).src_dir(src.sha256)
    dest.mkdir(parents=True)
    subprocess.run(["cp", "-al", str(src.tree), str(dest / "tree")], check=True)
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "minimal.toml")
    ap.add_argument("--skip-cold", action="store_true", help="only the no-op comparison")
    ap.add_argument("--runs", type=int, default=5, help="repetitions of the no-op measurements")
    ap.add_argument("--bundle-recipe", type=Path, default=REPO / "recipes" / "demo.toml",
                    help="a recipe on the same kernel, for the whole-CLI no-op build")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    spec = load_recipe(args.recipe).kernel
    assert spec.source is not None
    jobs = spec.jobs or os.cpu_count() or 1
    identity = source_identity(spec.source, cache_root=CACHE_ROOT)
    src = materialise_source(spec.source, identity, cache_root=CACHE_ROOT, mirrors=spec.mirrors)
    tree = patched_tree(KernelCache(CACHE_ROOT), src.tree, src.sha256, read_series(spec.patches, spec.series))

    with tempfile.TemporaryDirectory(prefix="mkspawn-bench-", dir=CACHE_ROOT) as tmp:
        work = Path(tmp)
        plain_dir = CACHE_ROOT / "bench" / "plain-make" if args.skip_cold else work / "plain"
        plain_dir.mkdir(parents=True, exist_ok=True)
        rows: list[tuple[str, Timing, Timing, float]] = []

        def ours_cold(ccache: bool) -> Timing:
            root = seeded_cache(work / f"ccache-{ccache}", spec)
            try:
                return timed(functools.partial(build_kernel, spec, arch="x86_64", cache_root=root,
                                               source_date_epoch=0, use_ccache=ccache))
            finally:
                shutil.rmtree(root)

        if args.skip_cold:
            plain_make(spec, tree, plain_dir, jobs)
        else:
            # Interleaved so a neighbour's load spike does not land on one side only.
            off = ours_cold(False)
            plain = plain_make(spec, tree, plain_dir, jobs)
            on = ours_cold(True)
            rows.append(("cold build, ccache off", off, plain, 1.03))
            rows.append(("cold build, ccache on (empty)", on, plain, 1.03))

        build_kernel(spec, arch="x86_64", cache_root=CACHE_ROOT, source_date_epoch=0)  # warm the key
        hits = [timed(lambda: build_kernel(spec, arch="x86_64", cache_root=CACHE_ROOT, source_date_epoch=0))
                for _ in range(args.runs)]
        noops = [noop_make(tree, plain_dir, jobs) for _ in range(args.runs)]
        rows.append(("no-op (cache hit vs no-op make)", _median(hits), _median(noops), 0.2))
        cli = [str(REPO / ".venv" / "bin" / "mkspawn"), "build", str(args.bundle_recipe), "-o", str(work / "x.mkb")]
        subprocess.run(cli, check=True, stdout=subprocess.DEVNULL)  # warm every stage's cache entry
        bundles = [timed(lambda: subprocess.run(cli, check=True, stdout=subprocess.DEVNULL))
                   for _ in range(args.runs)]
        rows.append(("no-op mkspawn build (whole CLI)", _median(bundles), _median(noops), 0.1))
        print(f"no-op mkspawn build: {_median(bundles).wall_s:.3f}s wall (goal <= 0.3s)")

    print(f"{'measurement':34} {'mkspawn wall/cpu':>18} {'make wall/cpu':>16} {'wall':>7} {'cpu':>7} {'goal':>6}")
    for label, ours, make, goal in rows:
        wall, cpu = ours.wall_s / make.wall_s, ours.cpu_s / max(make.cpu_s, 1e-9)
        print(f"{label:34} {ours.wall_s:8.2f}s/{ours.cpu_s:7.2f}s {make.wall_s:7.2f}s/{make.cpu_s:7.2f}s "
              f"{wall:6.3f}x {cpu:6.3f}x {'<=' + str(goal):>6}" + ("" if min(wall, cpu) <= goal else "  MISSED"))
    return 0


def _median(timings: list[Timing]) -> Timing:
    return Timing(statistics.median(t.wall_s for t in timings), statistics.median(t.cpu_s for t in timings))


if __name__ == "__main__":
    raise SystemExit(main())
