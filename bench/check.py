#!/usr/bin/env python3
"""`mkspawn check` against a bare scripted QEMU boot of the same two kernels.

Both boot the same host kernel (Debian's cloud kernel by default, or BENCH_HOST=path)
and have it kexec the recipes/minimal.toml spawn until the spawn prints the nonce
line.  The bare run gets its host initramfs prepared beforehand (outside the timing)
and is just `qemu-system-x86_64 …` read until the marker, then killed — what a shell
script would do.  `mkspawn check` is timed end to end as a user runs it: CLI start,
bundle verification, extraction, host initramfs, boot, parse.  Goal: ratio <= 1.05.
Without BENCH_HOST the check runs with no host option at all, as a user's does.

Run: .venv/bin/python bench/check.py   (the first run builds the spawn kernel, ~3 min)
"""

from __future__ import annotations

import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mkimage.initramfs.build import build_initramfs
from mkimage.kernel.build import build_kernel
from mkimage.pipeline import build_bundle
from mkimage.qemu import hostfs, hostkernel
from mkimage.qemu.params import X86_64_KEXEC
from mkimage.recipe.load import load_recipe
from mkimage.recipe.model import InitramfsSpec
from mkimage.signing.keys import PassphraseSource, load_private_key

REPO = Path(__file__).resolve().parents[1]
KEYS = REPO / "tests" / "data" / "keys"
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mkspawn"


def host_kernel() -> Path:
    if "BENCH_HOST" in os.environ:
        return Path(os.environ["BENCH_HOST"])
    return hostkernel.debian_kernel(CACHE)  # the check's default host, fetched once


def prepare(work: Path) -> tuple[Path, Path, Path, Path]:
    """(spawn kernel, spawn initrd, signed bundle, trust dir)."""
    recipe = load_recipe(REPO / "recipes" / "minimal.toml")
    kernel = build_kernel(recipe.kernel, arch="x86_64", cache_root=CACHE, source_date_epoch=0).image
    initrd = work / "initrd.img"
    build_initramfs(InitramfsSpec(), initrd, source_date_epoch=0)
    spawn = work / "spawn.toml"
    spawn.write_text(f'[metadata]\nname = "bench"\nversion = "1.0.0"\n[kernel]\nimage = "{kernel}"\n'
                     f'cmdline = "console=ttyS0 panic=-1"\n[initramfs]\nimage = "{initrd}"\n')
    bundle = work / "bench.mkb"
    key = load_private_key(KEYS / "test-ed25519.pem", PassphraseSource(None, "UNSET"), {})
    build_bundle(load_recipe(spawn), bundle, [key])
    trust = work / "trust"
    trust.mkdir()
    shutil.copy(KEYS / "test-ed25519.pub.pem", trust)
    return kernel, initrd, bundle, trust


def bare_boot(host: Path, host_initrd: Path, marker: str) -> float:
    argv = X86_64_KEXEC.argv(host, host_initrd)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if marker.encode() in line:
                return time.perf_counter() - start
        raise SystemExit(f"bare boot ended without {marker!r}")
    finally:
        proc.kill()
        proc.wait()


def mkspawn_check(bundle: Path, trust: Path, host: Path, log_dir: Path) -> float:
    given = ["--host-kernel", str(host)] if "BENCH_HOST" in os.environ else []
    argv = [sys.executable, "-m", "mkimage", "check", str(bundle), *given, "--trust", str(trust),
            "--log-dir", str(log_dir)]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"mkspawn check failed:\n{done.stdout}{done.stderr}")
    return elapsed


def main() -> None:
    host = host_kernel()
    with tempfile.TemporaryDirectory(prefix="mkspawn-bench-check-") as tmp:
        work = Path(tmp)
        kernel, initrd, bundle, trust = prepare(work)
        nonce = secrets.token_hex(8)
        hostfs.stage_payload(hostfs.SpawnPayload(kernel, initrd, "console=ttyS0 panic=-1"), nonce, ["kexec"],
                             work / "payload")
        host_initrd = hostfs.build_host_initramfs(hostfs.python_runtime(CACHE / "check"), work / "payload",
                                                  work / "host-initrd.cpio")
        mkspawn_check(bundle, trust, host, work / "warm")  # warm the page cache and pyruntime cache
        bare: list[float] = []
        check: list[float] = []
        for i in range(RUNS):  # interleaved, so a neighbour's load spike does not land on one side only
            bare.append(bare_boot(host, host_initrd, f"MKSPAWN-NONCE={nonce}"))
            check.append(mkspawn_check(bundle, trust, host, work / f"log{i}"))
    b, c = statistics.median(bare), statistics.median(check)
    print(f"host {host.name}, spawn {kernel.parent.name[:12]}…/{kernel.name}, median of {RUNS}")
    print(f"bare qemu boot to the nonce: {b:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in bare)})")
    print(f"mkspawn check:               {c:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in check)})")
    print(f"ratio check/bare: {c / b:.2f} (goal <= 1.05)")


if __name__ == "__main__":
    main()
