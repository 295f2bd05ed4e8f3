"""Time the quick start from an empty cache: recipe → signed bundle → boot check.

    python3 bench/quickstart.py [--recipe recipes/demo.toml] [--keep]

What a newcomer runs after ./setup.sh's apt step, with XDG_CACHE_HOME (the kernel,
initramfs and host-kernel caches, ccache included) pointed at a fresh temp dir: keygen,
`mkspawn build` (extracts the kernel source, compiles the spawn kernel, packs the
initramfs, signs), `mkspawn check` (fetches Debian's prebuilt host kernel, boots it under
QEMU, kexecs the spawn).  Each step is a whole CLI process.  Goal: ≤ 180 s on 2 cores.
The peer is the same run's own first step: nothing comparable exists.  ``--phases`` also
prints, per step, each line of its progress output (off a terminal: one per stage start
and end) at the second it appeared, to show where the time went.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MKSPAWN = REPO / ".venv" / "bin" / "mkspawn"
GOAL_S = 180.0


def step(label: str, argv: list[str], env: dict[str, str], timings: list[tuple[str, float]],
         phases: bool = False) -> None:
    start = time.monotonic()
    lines: list[tuple[float, str]] = []
    # stdout to a file, so a chatty step cannot block on a full pipe while stderr is read.
    with tempfile.TemporaryFile("w+") as out, subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.PIPE,
                                                                text=True) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:  # the progress lines, stamped as they arrive
            lines.append((time.monotonic() - start, line.rstrip("\n")))
        proc.wait()
        out.seek(0)
        stdout = out.read()
    elapsed = time.monotonic() - start
    timings.append((label, elapsed))
    print(f"{label:8} {elapsed:7.1f}s  $ {' '.join(argv[1:3])} …", flush=True)
    if phases:
        for at, line in lines:
            print(f"  {at:7.1f}s  {line}")
    if proc.returncode != 0:
        sys.stderr.write(stdout + "".join(line + "\n" for _, line in lines))
        raise SystemExit(f"{label} failed with {proc.returncode}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "demo.toml")
    ap.add_argument("--keep", action="store_true", help="keep the temp cache (to inspect it)")
    ap.add_argument("--phases", action="store_true", help="print each step's progress lines with their times")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mkspawn-quickstart-", dir="/var/tmp"))
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "cache"), "XDG_CONFIG_HOME": str(work / "config")}
    trust = work / "trust"
    trust.mkdir()
    timings: list[tuple[str, float]] = []
    try:
        step("keygen", [str(MKSPAWN), "keygen", "-o", str(work / "key.pem")], env, timings, args.phases)
        shutil.copy(work / "key.pub.pem", trust)
        step("build", [str(MKSPAWN), "build", str(args.recipe), "-o", str(work / "demo.mkb"), "--key",
                       str(work / "key.pem")], env, timings, args.phases)
        step("check", [str(MKSPAWN), "check", str(work / "demo.mkb"), "--recipe", str(args.recipe),
                       "--trust", str(trust)], env, timings, args.phases)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    total = sum(t for _, t in timings)
    print(f"quick start from an empty cache: {total:.1f}s (goal <= {GOAL_S:.0f}s)"
          + ("" if total <= GOAL_S else "  MISSED"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
