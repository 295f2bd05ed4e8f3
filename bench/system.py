"""Benchmark `mkspawn build SYSTEM` against building its spawns one after another.

    python3 bench/system.py [--system recipes/system-demo.toml] [--runs N]

Every side is a whole CLI run on a warm cache (the kernel is a cache hit):

1. ``mkspawn build SYSTEM -o NEW`` into a directory that does not exist yet, so every
   bundle is packed and signed.
2. One ``mkspawn build RECIPE -o X`` per spawn, in a row, each given its instance and the
   pool with ``--set`` so it makes the same trees, as a user without systems would.
   Goal: (1) ≤ 0.6× (2) (one process, one kernel cache check per distinct kernel, bundles
   packed in parallel).
3. The no-op rebuild: ``mkspawn build SYSTEM -o DIR`` again over the DIR of an identical
   build, which keeps every bundle (checked, not packed or signed).  Goal: ≤ 1 s.

The three are interleaved run by run and medians reported.  Timings on a shared 2-core
machine are noisy; run it when nothing else is busy.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mkimage.recipe.system import load_system  # noqa: E402 - after the sys.path line above


def mkspawn(*args: object) -> None:
    subprocess.run([sys.executable, "-m", "mkimage", *map(str, args)], check=True, cwd=REPO,
                   stdout=subprocess.DEVNULL)


def timed(fn: object) -> float:
    start = time.monotonic()
    fn()  # type: ignore[operator]
    return time.monotonic() - start


def spawn_overrides(system_path: Path) -> list[tuple[Path, list[str]]]:
    """Each spawn as a plain recipe build: its resolved instance and the pool as --set."""
    system = load_system(system_path)
    pool = system.pool
    chunks = ", ".join(f"{{ size_bytes = {c.size_bytes} }}" for c in pool.memory)
    builds = []
    for spawn in system.spawns:
        inst = spawn.instance
        assert spawn.recipe.path is not None
        sets = [f"instance.profile={inst.profile.value}", f"instance.name={inst.name}", f"instance.id={inst.id}",
                f"instance.cpus={list(inst.cpus)}", f"instance.memory_bytes={inst.memory_bytes}",
                f"devicetree.pool_cpus={list(pool.cpus)}", f"devicetree.pool_memory=[{chunks}]"]
        if inst.cmdline:
            sets.append(f"instance.cmdline={inst.cmdline}")
        builds.append((spawn.recipe.path, [a for s in sets for a in ("--set", s)]))
    return builds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", type=Path, default=REPO / "recipes" / "system-demo.toml")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    builds = spawn_overrides(args.system)
    with tempfile.TemporaryDirectory(prefix="mkspawn-bench-system-") as tmp:
        out = Path(tmp) / "system"
        mkspawn("build", args.system, "-o", out)  # warm-up: the cache is full afterwards
        one_by_one, fresh, noop = [], [], []
        for run in range(args.runs):
            one_by_one.append(timed(lambda: [mkspawn("build", recipe, "-o", Path(tmp) / f"{i}.mkb", *sets)
                                             for i, (recipe, sets) in enumerate(builds)]))
            fresh.append(timed(functools.partial(mkspawn, "build", args.system, "-o", Path(tmp) / f"fresh-{run}")))
            noop.append(timed(lambda: mkspawn("build", args.system, "-o", out)))
    a, b, c = statistics.median(fresh), statistics.median(one_by_one), statistics.median(noop)
    print(f"spawns: {len(builds)}, runs: {args.runs}")
    print(f"mkspawn build SYSTEM (fresh DIR):     median {a:.2f} s")
    print(f"{len(builds)} x mkspawn build RECIPE:          median {b:.2f} s")
    print(f"ratio: {a / b:.2f}x  (goal ≤ 0.6x)")
    print(f"mkspawn build SYSTEM (no-op rebuild): median {c:.2f} s  (goal ≤ 1 s; {c / a:.2f}x the fresh build)")


if __name__ == "__main__":
    main()
