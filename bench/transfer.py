#!/usr/bin/env python3
"""Push and pull of a 200 MB bundle through a local docker-registry, against curl moving
the same bytes (PUT of the blob, GET of the blob) in the same run.

Prints seconds and MB/s for each, the ratios mkspawn/curl (goal <= 1.3 each way), and the
bytes a second push of a bundle sharing the kernel uploads relative to the first (goal
< 5 %).  mkspawn runs as the CLI, as users run it: its push opens (hashes) the bundle first,
its pull checks every digest, reassembles and verifies before the file appears.
Run: .venv/bin/python bench/transfer.py
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mkimage.bundle.container import write_bundle  # noqa: E402
from mkimage.bundle.manifest import Component, Manifest, Provenance, Role  # noqa: E402
from mkimage.bundle.sign import make_signature  # noqa: E402
from mkimage.signing.keys import Algorithm, generate_key, public_key_pem  # noqa: E402
from tests.conftest import _build_bzimage as build_bzimage  # noqa: E402
from tests.registry.conftest import running_registry  # noqa: E402

SIZE = 200 * 1000 * 1000
RUNS = 3


def make_bundle(work: Path, kernel: Path, kernel_sha: str, cmdline: bytes, key: object, name: str) -> Path:
    (work / "cmdline").write_bytes(cmdline)
    components = [
        Component(Role.KERNEL, "bzImage", kernel.stat().st_size, kernel_sha, "application/vnd.linux.bzimage"),
        Component(Role.CMDLINE, "cmdline", len(cmdline), hashlib.sha256(cmdline).hexdigest(), "text/plain"),
    ]
    manifest = Manifest.build(
        recipe_name="bench", recipe_version="1", arch="x86_64", abi_profile="none",  # type: ignore[arg-type]
        kernel_release="6.12.0", components=components,
        provenance=Provenance(source_date_epoch=0, mkspawn_version="bench", tools={}, inputs=(), config_sha256=""),
    )
    mbytes = manifest.to_bytes()
    bundle = work / f"{name}.mkb"
    with bundle.open("wb") as f:
        write_bundle(f, mbytes, [make_signature(key, mbytes)],  # type: ignore[arg-type]
                     [("bzImage", kernel), ("cmdline", work / "cmdline")], 0)
    return bundle


def mkspawn(*args: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "mkimage", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"mkspawn {args[0]} failed: {done.stderr}")
    return done


def best(fn: Callable[[int], object]) -> float:
    times = []
    for run in range(RUNS):
        start = time.perf_counter()
        fn(run)
        times.append(time.perf_counter() - start)
    return min(times)


def curl_put(host: str, repo: str, blob: Path, digest: str) -> None:
    start = requests.post(f"http://{host}/v2/{repo}/blobs/uploads/", timeout=60)
    location = requests.compat.urljoin(f"http://{host}/", start.headers["Location"])
    subprocess.run(["curl", "-sSf", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
                    "--data-binary", f"@{blob}", f"{location}&digest={digest}"], check=True, capture_output=True)


def main() -> None:
    for tool in ("curl", "docker-registry"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
        work = Path(tmp)
        kernel = work / "bzImage"
        # A bzImage header (what verify's content check reads) around an incompressible payload.
        kernel.write_bytes(build_bzimage(b"\x1f\x8b\x08\x00" + os.urandom(SIZE)))
        digest = hashlib.sha256(kernel.read_bytes())
        kernel_sha = digest.hexdigest()
        key = generate_key(Algorithm.ED25519)
        trust = work / "trust"
        trust.mkdir()
        (trust / "k.pem").write_bytes(public_key_pem(key.public_key()))
        first = make_bundle(work, kernel, kernel_sha, b"console=ttyS0", key, "first")
        second = make_bundle(work, kernel, kernel_sha, b"console=ttyS0 quiet", key, "second")
        mb = first.stat().st_size / 1e6

        with running_registry(work / "registry", tls=False) as registry:
            host = registry.host
            t_push = best(lambda run: mkspawn("push", first, f"{host}/push{run}/bench:1", "--insecure"))
            t_curl_put = best(lambda run: curl_put(host, f"curl{run}/bench", kernel, f"sha256:{kernel_sha}"))
            out = work / "pulled.mkb"
            t_pull = best(lambda run: mkspawn("pull", f"{host}/push0/bench:1", "-o", out, "--trust", trust,
                                              "--insecure"))
            if out.read_bytes() != first.read_bytes():
                sys.exit("the pulled bundle differs from the pushed one")
            blob_url = f"http://{host}/v2/push0/bench/blobs/sha256:{kernel_sha}"
            t_curl_get = best(lambda run: subprocess.run(["curl", "-sSf", "-o", str(work / "blob"), blob_url],
                                                         check=True))
            shared = json.loads(mkspawn("push", first, f"{host}/dedup/bench:1", "--insecure", "--json").stdout)
            again = json.loads(mkspawn("push", second, f"{host}/dedup/bench:2", "--insecure", "--json").stdout)

    print(f"bundle: {mb:.0f} MB (kernel blob {SIZE / 1e6:.0f} MB), "
          f"best of {RUNS}, docker-registry on 127.0.0.1 over plain HTTP")
    print(f"mkspawn push: {t_push:.3f} s  {mb / t_push:.0f} MB/s")
    print(f"curl PUT:     {t_curl_put:.3f} s  {mb / t_curl_put:.0f} MB/s")
    print(f"mkspawn pull: {t_pull:.3f} s  {mb / t_pull:.0f} MB/s  (digests, reassembly, verify)")
    print(f"curl GET:     {t_curl_get:.3f} s  {mb / t_curl_get:.0f} MB/s")
    print(f"ratio push/curl PUT: {t_push / t_curl_put:.2f} (goal <= 1.3)")
    print(f"ratio pull/curl GET: {t_pull / t_curl_get:.2f} (goal <= 1.3)")
    ratio = again["uploaded_bytes"] / shared["uploaded_bytes"]
    print(f"second push (kernel shared): {again['uploaded_bytes']} of {shared['uploaded_bytes']} bytes, "
          f"ratio {ratio:.4%} (goal < 5 %)")


if __name__ == "__main__":
    main()
