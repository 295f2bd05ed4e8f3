"""Benchmark the build-farm paths of the kernel stage, same recipe, same run.

    python3 bench/remote_cache.py [--recipe recipes/minimal.toml] [--skip-distcc]

Starts its own redis-server and distccd on 127.0.0.1 (random ports), then compiles the
recipe's kernel four times, each in a fresh cache root that holds only the extracted
source (hard links), so every run has an empty local ccache and really runs make:

1. truly cold: no remote cache, no distcc;
2. cold, filling the remote cache (what the first runner of a CI pays for sharing);
3. warm remote: another root, empty local ccache, every object in Redis.
   Goal: ≤ 0.3× of (1);
4. distcc on loopback: every compile through distccd on this machine.  It cannot be
   faster than (1) on one machine; the ratio is what the plumbing costs.

Timings on a shared 2-core machine are noisy; run it when nothing else is busy.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.kernel import CACHE_ROOT, seeded_cache  # noqa: E402 - after the sys.path line above
from bench.timing import Timing, timed  # noqa: E402 - after the sys.path line above
from mkimage.kernel.build import build_kernel  # noqa: E402 - after the sys.path line above
from mkimage.kernel.farm import STATS_LOG_NAME, read_stats_log  # noqa: E402 - after the sys.path line above
from mkimage.recipe.load import load_recipe  # noqa: E402 - after the sys.path line above
from mkimage.recipe.userconfig import BuildSettings  # noqa: E402 - after the sys.path line above


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(argv: list[str], port: int) -> Iterator[None]:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{argv[0]} did not start")
            time.sleep(0.1)
        yield
    finally:
        os.killpg(proc.pid, 15)
        proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "minimal.toml")
    ap.add_argument("--skip-distcc", action="store_true", help="only the remote cache measurements")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    spec = load_recipe(args.recipe).kernel
    redis_port, distcc_port, stats_port = free_port(), free_port(), free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}"
    host = f"127.0.0.1:{distcc_port}/{os.cpu_count() or 1}"

    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mkspawn-bench-", dir=CACHE_ROOT)))
        stack.enter_context(server(["redis-server", "--bind", "127.0.0.1", "--port", str(redis_port), "--save", "",
                                    "--appendonly", "no", "--dir", str(tmp)], redis_port))
        if not args.skip_distcc:
            stack.enter_context(server(["distccd", "--daemon", "--no-detach", "--allow", "127.0.0.1", "--listen",
                                        "127.0.0.1", "--port", str(distcc_port), "--stats", "--stats-port",
                                        str(stats_port), "--jobs", str(os.cpu_count() or 1)], distcc_port))
        rows: list[tuple[str, Timing, str]] = []

        def run(label: str, farm: BuildSettings) -> Timing:
            # The same depth under tmp for every root, as two runners' caches would be.
            root = seeded_cache(tmp / label.split()[0], spec)
            try:
                timing = timed(functools.partial(build_kernel, spec, arch="x86_64", cache_root=root,
                                                 source_date_epoch=0, use_ccache=True, farm=farm))
                (stats,) = (root / "kernel" / "out").glob(f"*/{STATS_LOG_NAME}")
                rows.append((label, timing, read_stats_log(stats).describe()))
                print(f"{label}: {timing.wall_s:.1f}s wall, {timing.cpu_s:.1f}s cpu", flush=True)
                return timing
            finally:
                shutil.rmtree(root)

        cold = run("cold (no remote, no distcc)", BuildSettings())
        fill = run("fill (cold, writing the remote cache)", BuildSettings(remote_cache=redis_url))
        warm = run("warm-remote (empty local ccache)", BuildSettings(remote_cache=redis_url))
        distcc = None if args.skip_distcc else run("distcc (loopback, every compile)",
                                                   BuildSettings(distcc_hosts=[host]))

    print(f"\n{'measurement':42} {'wall':>8} {'cpu':>8}  ccache")
    for label, t, figures in rows:
        print(f"{label:42} {t.wall_s:7.1f}s {t.cpu_s:7.1f}s  {figures}")
    print(f"\nwarm remote / cold: {warm.wall_s / cold.wall_s:.3f}x wall, {warm.cpu_s / cold.cpu_s:.3f}x cpu "
          f"(goal <= 0.3){'' if warm.wall_s / cold.wall_s <= 0.3 else '  MISSED'}")
    print(f"filling the remote / cold: {fill.wall_s / cold.wall_s:.3f}x wall, {fill.cpu_s / cold.cpu_s:.3f}x cpu")
    if distcc is not None:
        print(f"distcc on loopback / cold: {distcc.wall_s / cold.wall_s:.3f}x wall, "
              f"{distcc.cpu_s / cold.cpu_s:.3f}x cpu (this process and its children; distccd's compiles are not "
              "children, so its cpu figure leaves them out)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
