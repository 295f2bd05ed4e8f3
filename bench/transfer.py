#!/usr/bin/env python3
"""Push and pull of a 200 MB bundle through a local docker-registry, against curl moving
the same bytes (PUT of the blob, GET of the blob) in the same run.

Prints seconds and MB/s for each, the ratios mkspawn/curl (goal <= 1.3 each way), and the
bytes a second push of a bundle sharing the kernel uploads relative to the first (goal
< 5 %).  mkspawn runs as the CLI, as users run it; its pull verifies (signature, trust,
one sha256 pass per blob, fsync) before the file appears, which plain curl does not, so
the pull is also compared with ``curl GET | tee FILE | openssl dgst -sha256`` -- the
least a digest-checked download does -- and the CLI's start-up (``pull --help``) is
printed on its own line.  Each round runs mkspawn and its peer back to back, so a loaded
machine slows both; the medians are compared.  The bundles come from the real builder.
Run: .venv/bin/python bench/transfer.py
"""

from __future__ import annotations

import functools
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import SYNTH_RELEASE  # noqa: E402
from tests.conftest import _build_bzimage as build_bzimage  # noqa: E402
from tests.registry.conftest import KEYS, make_bundle, running_registry  # noqa: E402

SIZE = 200 * 1000 * 1000
RUNS = 5


def mkspawn(*args: object) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "mkimage", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"mkspawn {args[0]} failed: {done.stderr}")
    return done


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def rounds(ours: Callable[[int], object], peer: Callable[[int], object]) -> tuple[float, float]:
    """Medians of ``RUNS`` rounds, each running ours and then the peer."""
    a, b = [], []
    for run in range(RUNS):
        a.append(timed(functools.partial(ours, run)))
        b.append(timed(functools.partial(peer, run)))
    return statistics.median(a), statistics.median(b)


def curl_put(host: str, repo: str, blob: Path, digest: str) -> None:
    start = requests.post(f"http://{host}/v2/{repo}/blobs/uploads/", timeout=60)
    location = requests.compat.urljoin(f"http://{host}/", start.headers["Location"])
    subprocess.run(["curl", "-sSf", "-X", "PUT", "-H", "Content-Type: application/octet-stream",
                    "--data-binary", f"@{blob}", f"{location}&digest={digest}"], check=True, capture_output=True)


def curl_get_sha256(url: str, out: Path) -> None:
    subprocess.run(f"curl -sSf {url} | tee {out} | openssl dgst -sha256 >/dev/null", shell=True, check=True)


def main() -> None:
    for tool in ("curl", "docker-registry", "openssl"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is required")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR", "/var/tmp")) as tmp:
        work = Path(tmp)
        kernel = work / "bzImage"
        # Stored (level 0) gzip of random bytes: a valid, incompressible bzImage payload.
        text = f"Linux version {SYNTH_RELEASE} ".encode() + os.urandom(SIZE)
        kernel.write_bytes(build_bzimage(gzip.compress(text, compresslevel=0, mtime=0)))
        first = make_bundle(work / "first", kernel)
        second = make_bundle(work / "second", kernel, cmdline="console=ttyS0 quiet")
        trust = work / "trust"
        trust.mkdir()
        shutil.copy(KEYS / "test-ed25519.pub.pem", trust)
        mb = first.stat().st_size / 1e6

        with running_registry(work / "registry", tls=False) as registry:
            host = registry.host
            pushed = json.loads(mkspawn("push", first, f"{host}/seed/bench:1", "--insecure", "--json").stdout)
            blob = max(pushed["blobs"], key=lambda b: b["size"])
            t_push, t_curl_put = rounds(
                lambda run: mkspawn("push", first, f"{host}/push{run}/bench:1", "--insecure"),
                lambda run: curl_put(host, f"curl{run}/bench", kernel_blob(first, work), blob["digest"]))
            out = work / "pulled.mkb"
            blob_url = f"http://{host}/v2/seed/bench/blobs/{blob['digest']}"
            t_pull, t_curl_get = rounds(
                lambda run: mkspawn("pull", f"{host}/seed/bench:1", "-o", out, "--trust", trust, "--insecure"),
                lambda run: subprocess.run(["curl", "-sSf", "-o", str(work / "blob"), blob_url], check=True))
            if out.read_bytes() != first.read_bytes():
                sys.exit("the pulled bundle differs from the pushed one")
            t_curl_sha = statistics.median(timed(lambda: curl_get_sha256(blob_url, work / "blob"))
                                           for _ in range(RUNS))
            t_start = statistics.median(timed(lambda: mkspawn("pull", "--help")) for _ in range(RUNS))
            again = json.loads(mkspawn("push", second, f"{host}/seed/bench:2", "--insecure", "--json").stdout)

    print(f"bundle: {mb:.0f} MB (kernel blob {blob['size'] / 1e6:.0f} MB), median of {RUNS} interleaved rounds, "
          "docker-registry on 127.0.0.1 over plain HTTP")
    # The machine may be shared: the ratios hold up under load better than the seconds do.
    print(f"load average (1 min): {load_before:.2f} before, {os.getloadavg()[0]:.2f} after, {os.cpu_count()} CPUs")
    print(f"mkspawn push: {t_push:.3f} s  {mb / t_push:.0f} MB/s")
    print(f"curl PUT:     {t_curl_put:.3f} s  {mb / t_curl_put:.0f} MB/s")
    print(f"mkspawn pull: {t_pull:.3f} s  {mb / t_pull:.0f} MB/s  (signature first, one sha256 per blob, fsync)")
    print(f"curl GET:     {t_curl_get:.3f} s  {mb / t_curl_get:.0f} MB/s")
    print(f"curl GET | tee | openssl dgst: {t_curl_sha:.3f} s  {mb / t_curl_sha:.0f} MB/s")
    print(f"mkspawn start-up (pull --help): {t_start:.3f} s")
    print(f"ratio push/curl PUT: {t_push / t_curl_put:.2f} (goal <= 1.3)")
    print(f"ratio pull/curl GET: {t_pull / t_curl_get:.2f} (goal <= 1.3); "
          f"pull/(curl GET | openssl dgst): {t_pull / t_curl_sha:.2f}; "
          f"without start-up: {(t_pull - t_start) / t_curl_get:.2f}")
    ratio = again["uploaded_bytes"] / pushed["uploaded_bytes"]
    print(f"second push (kernel shared): {again['uploaded_bytes']} of {pushed['uploaded_bytes']} bytes, "
          f"ratio {ratio:.4%} (goal < 5 %)")


def kernel_blob(bundle: Path, work: Path) -> Path:
    """The bundle's bzImage member as a file, for curl to PUT (extracted once)."""
    path = work / "kernel-blob"
    if not path.exists():
        with tarfile.open(bundle) as tar:
            member = tar.extractfile("bzImage")
            assert member is not None
            with path.open("wb") as f:
                shutil.copyfileobj(member, f, 1 << 20)
    return path


if __name__ == "__main__":
    main()

