#!/usr/bin/env python3
"""Verify throughput on 200 MB and 1 GB signed bundles, against ``openssl dgst -sha256``
and ``sha256sum`` of the same file in the same run.

Prints, per size, the medians of ``mkspawn verify`` as the CLI (what users run),
``verify_bundle`` in-process (the same work without interpreter start-up and imports),
and the two peers, then the throughput ratio openssl_time / verify_time (goal >= 0.9 at
1 GB) and the start-up share of the CLI's time (``mkspawn verify`` of a missing file:
every import verify makes, then a refusal before any byte is read).  The bundles
are built by the real builder from a recipe whose initrd is random bytes (no holes, so
the disk and page cache see real data); they live in $BENCH_DIR (default /tmp) and are
deleted afterwards.  Rounds interleave ours and the peers, so a loaded machine slows all.
Run: .venv/bin/python bench/verify.py
"""

from __future__ import annotations

import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mkimage.bundle.verify import verify_bundle  # noqa: E402
from mkimage.pipeline import build_bundle  # noqa: E402
from mkimage.recipe.load import load_recipe  # noqa: E402
from mkimage.signing.keys import PassphraseSource, load_private_key  # noqa: E402
from mkimage.signing.trust import load_trust_store  # noqa: E402
from tests.conftest import SYNTH_RELEASE  # noqa: E402
from tests.conftest import _build_bzimage as build_bzimage  # noqa: E402

KEYS = REPO / "tests" / "data" / "keys"
SIZES = (200 * 1000 * 1000, 1000 * 1000 * 1000)
RUNS = 3
GOAL = 0.9


def make_bundle(work: Path, size: int) -> Path:
    """A signed bundle whose initrd is ``size`` random bytes after a newc magic."""
    kernel = work / "bzImage"
    kernel.write_bytes(build_bzimage(gzip.compress(f"Linux version {SYNTH_RELEASE} ".encode(), mtime=0)))
    initrd = work / "initrd.cpio"
    with initrd.open("wb") as f:
        f.write(b"070701")
        left = size
        while left:
            chunk = os.urandom(min(left, 16 << 20))
            f.write(chunk)
            left -= len(chunk)
    recipe = work / "spawn.toml"
    recipe.write_text(f"""
[metadata]
name = "bench"
version = "1.0.0"
source_date_epoch = 1700000000
[kernel]
image = "{kernel}"
cmdline = "console=ttyS0"
[initramfs]
image = "{initrd}"
""")
    signer = load_private_key(KEYS / "test-ed25519.pem", PassphraseSource(None, "UNSET"), {})
    out = work / "bench.mkb"
    build_bundle(load_recipe(recipe), out, [signer])
    initrd.unlink()
    return out


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(*argv: object) -> None:
    subprocess.run([str(a) for a in argv], check=True, capture_output=True, cwd=REPO)


def measure(bundle: Path, trust_dir: Path) -> dict[str, float]:
    store = load_trust_store(trust_dir, must_exist=True)
    cases: dict[str, Callable[[], object]] = {
        "mkspawn verify (CLI)": lambda: run(sys.executable, "-m", "mkimage", "verify", bundle, "--trust", trust_dir),
        "verify_bundle (in-process)": lambda: verify_bundle(bundle, store),
        "openssl dgst -sha256": lambda: run("openssl", "dgst", "-sha256", bundle),
        "sha256sum": lambda: run("sha256sum", bundle),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(RUNS):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    for tool in ("openssl", "sha256sum"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required")
    trust_dir = Path(tempfile.mkdtemp())
    shutil.copy(KEYS / "test-ed25519.pub.pem", trust_dir)
    missing = trust_dir / "no-such.mkb"
    argv = [sys.executable, "-m", "mkimage", "verify", str(missing), "--trust", str(trust_dir)]
    startup = statistics.median(timed(lambda: subprocess.run(argv, capture_output=True, cwd=REPO, check=False))
                                for _ in range(RUNS))
    print(f"median of {RUNS} interleaved rounds, page cache warm; "
          f"mkspawn start-up (verify of a missing file): {startup:.3f} s")
    try:
        for size in SIZES:
            with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/tmp")) as tmp:
                bundle = make_bundle(Path(tmp), size)
                mb = bundle.stat().st_size / 1e6
                result = measure(bundle, trust_dir)
            print(f"bundle: {mb:.0f} MB")
            for name, t in result.items():
                print(f"  {name:28} {t:.3f} s  {mb / t:5.0f} MB/s")
            cli, peer = result["mkspawn verify (CLI)"], result["openssl dgst -sha256"]
            goal = f" (goal >= {GOAL})" if size >= SIZES[-1] else ""
            print(f"  throughput ratio verify/openssl: CLI {peer / cli:.2f}{goal}, "
                  f"in-process {peer / result['verify_bundle (in-process)']:.2f}; "
                  f"start-up is {startup / cli:.0%} of the CLI's time")
    finally:
        shutil.rmtree(trust_dir)


if __name__ == "__main__":
    main()
