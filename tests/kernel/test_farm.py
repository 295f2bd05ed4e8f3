"""Build farms for real: recipes/minimal.toml compiled through a real distccd into a real
Redis-backed ccache remote storage, then rebuilt by "other runners" (other cache roots)
that hit it, that cannot reach it, whose distcc hosts are down, and whose remote entries
are corrupt.  Every bundle must equal, byte for byte, the one a plain local build makes.

Cost: one cold compile (the distcc build, run A), the rest are cache hits plus a few
dozen objects each.  Run A and the second runner share their state through module
fixtures; the later tests take R1 and R2 back by removing their kernel entry (so make
runs again) and, where a path must really compile, some of their local ccache results.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mkimage.kernel.farm import DISTCC_LOG_NAME, STATS_LOG_NAME, read_distcc_log, read_stats_log
from tests.conftest import run_mkspawn
from tests.kernel.farm_servers import Distccd, Redis, dead_port, distccd, need, redis_server

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MINIMAL = REPO / "recipes" / "minimal.toml"
BUILD_TIMEOUT_S = 3600
# One object in this many loses its local ccache result, so that a path which must
# really compile (distcc fallback, corrupt remote entries) compiles a few dozen objects.
DROP_EVERY = 8
SECRET = "hunter2-farm-secret"


@dataclass(frozen=True, slots=True)
class Servers:
    redis: Redis
    distccd: Distccd


@dataclass(frozen=True, slots=True)
class Run:
    bundle: Path
    stderr: str
    root: Path  # XDG_CACHE_HOME: the cache root is root/mkspawn
    seconds: float

    @property
    def entry(self) -> Path:
        (entry,) = (self.root / "mkspawn" / "kernel" / "out").iterdir()
        return entry

    def ccache(self) -> Path:
        return self.root / "mkspawn" / "ccache"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    need("ccache", "distcc")
    work = tmp_path_factory.mktemp("farm-servers")
    with redis_server(work) as redis, distccd(work) as dcc:
        yield Servers(redis, dcc)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bundle a plain local build makes (the user's cache: a hit once any test built it)."""
    out = tmp_path_factory.mktemp("farm-reference") / "minimal.mkb"
    done = run_mkspawn("build", MINIMAL, "-o", out, timeout_s=BUILD_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    return out.read_bytes()


def build(root: Path, config: str, *args: str) -> Run:
    """`mkspawn -v build` as another runner: its own cache root and its own config file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.toml").write_text(config)
    bundle = root / "minimal.mkb"
    bundle.unlink(missing_ok=True)
    started = time.monotonic()
    done = run_mkspawn("-v", "build", MINIMAL, "-o", bundle, *args, timeout_s=BUILD_TIMEOUT_S,
                       env={"XDG_CACHE_HOME": str(root), "MKSPAWN_CONFIG": str(root / "config.toml")})
    assert done.returncode == 0, done.stderr
    return Run(bundle, done.stderr, root, time.monotonic() - started)


def rebuild_kernel(root: Path) -> None:
    """Drop the root's kernel entry, so the next build runs make again (the extracted,
    patched tree and the local ccache stay)."""
    shutil.rmtree(root / "mkspawn" / "kernel" / "out")


def drop_local_results(ccache_dir: Path) -> int:
    """Remove every DROP_EVERY-th result from a local ccache (ccache 4.x keeps a result
    in a file whose name ends in R); returns how many."""
    results = sorted(p for p in ccache_dir.glob("?/?/*R") if p.is_file())
    dropped = results[::DROP_EVERY]
    for path in dropped:
        path.unlink()
    return len(dropped)


def warnings(stderr: str, word: str) -> list[str]:
    return [line for line in stderr.splitlines() if word in line]


@pytest.fixture(scope="module")
def run_a(servers: Servers, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Runner 1, everything cold: compiled on distccd, every object stored in Redis."""
    root = tmp_path_factory.mktemp("farm") / "r1"
    return build(root, f'[build]\nremote_cache = "{servers.redis.url}"\n'
                       f'distcc_hosts = ["{servers.distccd.host}"]\n')


@pytest.fixture(scope="module")
def run_b(servers: Servers, run_a: Run, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Runner 2: a different cache root, an empty local ccache, the same remote cache."""
    root = tmp_path_factory.mktemp("farm") / "r2"
    return build(root, f'[build]\nremote_cache = "{servers.redis.url}"\n')


def test_distcc_build_compiles_on_distccd_and_matches_a_local_build(run_a: Run, servers: Servers,
                                                                  reference: bytes) -> None:
    figures = read_stats_log(run_a.entry / STATS_LOG_NAME)
    distcc = read_distcc_log(run_a.entry / DISTCC_LOG_NAME)
    print(f"run A (cold, distcc, filling redis): {run_a.seconds:.0f}s, {figures.describe()}; {distcc.describe()}; "
          f"distccd: {servers.distccd.compiled()} compiled")
    assert figures.misses > 200 and figures.local_hits == figures.remote_hits == 0, figures
    # distccd's own counter: the server compiled (nearly) every object ccache missed.
    # kernel/configs.c fails there (it .incbin's a generated file the server lacks) and is
    # compiled here; a short back-off follows.
    assert servers.distccd.compiled() >= 0.9 * figures.misses, (servers.distccd.stats(), figures)
    assert distcc.remote == servers.distccd.compiled() and distcc.fallbacks < 0.05 * figures.misses
    assert len(servers.redis.keys()) >= figures.misses  # a result (and a manifest) per object
    assert run_a.bundle.read_bytes() == reference
    assert f"kernel: distcc: {distcc.remote} objects compiled remotely" in run_a.stderr
    assert not warnings(run_a.stderr, "unreachable"), run_a.stderr


def test_second_runner_hits_the_remote_cache(run_b: Run, reference: bytes) -> None:
    figures = read_stats_log(run_b.entry / STATS_LOG_NAME)
    print(f"run B (empty local ccache, warm remote): {run_b.seconds:.0f}s, {figures.describe()}")
    assert figures.compiles > 200
    assert figures.remote_hits >= 0.9 * figures.compiles, figures
    # ccache's own summary of the same log says the same.
    shown = subprocess.run(["ccache", "--show-log-stats"], capture_output=True, text=True, check=True,
                           env={"PATH": "/usr/bin:/bin", "CCACHE_STATSLOG": str(run_b.entry / STATS_LOG_NAME),
                                "CCACHE_DIR": str(run_b.ccache())}).stdout
    remote = re.search(r"Remote storage:\s+Hits:\s+(\d+) /\s*(\d+)", shown)
    # ccache counts kbuild's compiler-option probes too, which the figures leave out.
    assert remote is not None and figures.remote_hits <= int(remote[1]) <= figures.remote_hits + figures.uncacheable
    assert run_b.bundle.read_bytes() == reference
    assert f"{figures.remote_hits} remote hits" in run_b.stderr


def test_unreachable_remote_cache_warns_once_and_builds_locally(run_a: Run, reference: bytes) -> None:
    rebuild_kernel(run_a.root)
    port = dead_port()
    run = build(run_a.root, f'[build]\nremote_cache = "redis://:{SECRET}@127.0.0.1:{port}/0"\n')
    print(f"remote unreachable: {run.seconds:.0f}s, {read_stats_log(run.entry / STATS_LOG_NAME).describe()}")
    (warning,) = warnings(run.stderr, "unreachable")
    assert f"remote cache redis://***@127.0.0.1:{port}/0 is unreachable" in warning
    assert "building with the local cache only" in warning
    figures = read_stats_log(run.entry / STATS_LOG_NAME)
    assert figures.remote_hits == figures.remote_errors == 0  # ccache never saw the dead URL
    assert figures.local_hits >= 0.9 * figures.compiles > 200, figures
    assert run.bundle.read_bytes() == reference
    # The password is nowhere: not in the output, not in what the cache entry keeps.
    assert SECRET not in run.stderr
    assert not [p for p in run.entry.iterdir() if p.is_file() and SECRET.encode() in p.read_bytes()]


def test_distcc_hosts_down_fall_back_to_local_compiles_with_one_warning(run_a: Run, reference: bytes) -> None:
    rebuild_kernel(run_a.root)
    dropped = drop_local_results(run_a.ccache())
    host = f"127.0.0.1:{dead_port()}/2"
    run = build(run_a.root, f'[build]\ndistcc_hosts = ["{host}"]\n')
    print(f"distcc hosts down: {run.seconds:.0f}s, {read_distcc_log(run.entry / DISTCC_LOG_NAME).describe()}")
    (warning,) = warnings(run.stderr, "unreachable")
    assert f"distcc host unreachable: {host}" in warning and "compiles all jobs locally" in warning
    figures = read_stats_log(run.entry / STATS_LOG_NAME)
    distcc = read_distcc_log(run.entry / DISTCC_LOG_NAME)
    # The dropped results include a few of kbuild's compiler probes, which are not objects.
    assert figures.misses > 10 and figures.misses + figures.uncacheable >= dropped, (figures, dropped)
    # distcc's own fallback did the work: every compile ran here, none remotely (its log
    # names C files only; the few assembler files run here without a line).
    assert distcc.remote == 0 and distcc.local >= 0.8 * figures.misses and distcc.fallbacks >= 1, distcc
    assert run.bundle.read_bytes() == reference


def test_corrupt_remote_entries_are_refused_and_the_bundle_stays_identical(run_b: Run, servers: Servers,
                                                                          reference: bytes) -> None:
    rebuild_kernel(run_b.root)
    dropped = drop_local_results(run_b.ccache())
    # Flip one byte in the middle of every value: the header still parses, so it is
    # ccache's checksum, not a bad magic number, that must catch it.
    redis = servers.redis
    for key in list(redis.keys()):
        value = redis.command("GET", key)
        assert isinstance(value, bytes)
        flipped = bytearray(value)
        flipped[len(flipped) // 2] ^= 0xFF
        redis.command("SET", key, bytes(flipped))
    run = build(run_b.root, f'[build]\nremote_cache = "{redis.url}|read-only"\n')
    print(f"corrupt remote: {run.seconds:.0f}s, {read_stats_log(run.entry / STATS_LOG_NAME).describe()}")
    figures = read_stats_log(run.entry / STATS_LOG_NAME)
    assert figures.remote_hits == 0, figures
    # Every object whose local result was dropped was read from Redis, refused, compiled.
    assert figures.rejected > 10 and figures.misses == figures.rejected >= 0.5 * dropped, (figures, dropped)
    assert "remote entries refused as corrupt" in run.stderr
    assert run.bundle.read_bytes() == reference
