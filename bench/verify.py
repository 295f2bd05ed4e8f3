#!/usr/bin/env python3
"""Verify throughput on a 200 MB bundle, against sha256sum of the same file.

Prints MB/s for both and the ratio sha256sum_time / verify_time (goal >= 0.8: verifying
a bundle costs at most 25 % more than hashing it once).  Run: .venv/bin/python bench/verify.py
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mkimage.bundle.container import write_bundle
from mkimage.bundle.manifest import Component, Manifest, Provenance, Role
from mkimage.bundle.sign import make_signature
from mkimage.bundle.verify import verify_bundle
from mkimage.signing.keys import Algorithm, generate_key, public_key_pem
from mkimage.signing.trust import load_trust_store

SIZE = 200 * 1000 * 1000
RUNS = 3


def make_bundle(work: Path) -> tuple[Path, Path]:
    payload = work / "initrd"
    digest = hashlib.sha256()
    with payload.open("wb") as f:
        for _ in range(SIZE // (1 << 20)):
            chunk = os.urandom(1 << 20)
            digest.update(chunk)
            f.write(chunk)
    size = payload.stat().st_size
    manifest = Manifest.build(
        recipe_name="bench", recipe_version="1", arch="x86_64", abi_profile="none",  # type: ignore[arg-type]
        kernel_release="6.12.0",
        components=[Component(Role.INITRD, "initrd", size, digest.hexdigest(), "application/x-cpio")],
        provenance=Provenance(source_date_epoch=0, mkspawn_version="bench", tools={}, inputs=(), config_sha256=""),
    )
    key = generate_key(Algorithm.ED25519)
    trust = work / "trust"
    trust.mkdir()
    (trust / "k.pem").write_bytes(public_key_pem(key.public_key()))
    mbytes = manifest.to_bytes()
    bundle = work / "bench.mkb"
    with bundle.open("wb") as f:
        write_bundle(f, mbytes, [make_signature(key, mbytes)], [("initrd", payload)], 0)
    payload.unlink()
    return bundle, trust


def best(fn: object) -> float:
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    if shutil.which("sha256sum") is None:
        sys.exit("sha256sum is required")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
        bundle, trust_dir = make_bundle(Path(tmp))
        store = load_trust_store(trust_dir, must_exist=True)
        mb = bundle.stat().st_size / 1e6
        t_verify = best(lambda: verify_bundle(bundle, store))
        t_sum = best(lambda: subprocess.run(["sha256sum", str(bundle)], check=True, capture_output=True))
    print(f"bundle: {mb:.0f} MB, best of {RUNS} (page cache warm)")
    print(f"mkspawn verify: {t_verify:.3f} s  {mb / t_verify:.0f} MB/s")
    print(f"sha256sum:      {t_sum:.3f} s  {mb / t_sum:.0f} MB/s")
    print(f"ratio sha256sum/verify: {t_sum / t_verify:.2f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
