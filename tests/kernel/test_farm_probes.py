"""The farm plumbing without a kernel: probes against real redis-server, distccd and an
HTTP server, and the figures read from what real ccache and distcc write when they
compile a few small C files."""

from __future__ import annotations

import contextlib
import http.server
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkimage.kernel.farm import (
    DISTCC_LOG_NAME,
    STATS_LOG_NAME,
    ccache_counters,
    plan_farm,
    probe_host,
    probe_remote,
    read_distcc_log,
    read_stats_log,
)
from mkimage.recipe.userconfig import BuildSettings, parse_distcc_host, parse_remote_cache
from tests.kernel.farm_servers import Distccd, Redis, dead_port, distccd, need, redis_server

SOURCES = {f"unit{i}.c": f"int f{i}(int x) {{ return x * {i + 3} + {i}; }}\n" for i in range(4)}


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def dcc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distccd]:
    with distccd(tmp_path_factory.mktemp("distccd")) as server:
        yield server


@contextlib.contextmanager
def http_server(status: int) -> Iterator[int]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_redis_probe(redis: Redis, tmp_path: Path) -> None:
    assert probe_remote(parse_remote_cache(redis.url)) is None
    assert probe_remote(parse_remote_cache(f"redis://127.0.0.1:{dead_port()}")) == "Connection refused"
    redis.command("CONFIG", "SET", "requirepass", "s3cret")
    try:
        assert probe_remote(parse_remote_cache(f"redis://:s3cret@127.0.0.1:{redis.port}")) is None
        assert probe_remote(parse_remote_cache(f"redis://s3cret@127.0.0.1:{redis.port}")) is None
        assert probe_remote(parse_remote_cache(f"redis://:wrong@127.0.0.1:{redis.port}")) == "refused the credentials"
        assert probe_remote(parse_remote_cache(redis.url)) == "needs a password (redis://:PASSWORD@HOST)"
    finally:
        redis.command("CONFIG", "SET", "requirepass", "", password="s3cret")
    assert probe_remote(parse_remote_cache(redis.url)) is None


def test_http_probe() -> None:
    with http_server(404) as port:  # a cache without the key: the server is there
        assert probe_remote(parse_remote_cache(f"http://127.0.0.1:{port}/cache")) is None
    with http_server(401) as port:
        assert probe_remote(parse_remote_cache(f"http://u:pw@127.0.0.1:{port}/")) == \
            "refused the credentials (HTTP 401)"
    assert probe_remote(parse_remote_cache(f"http://127.0.0.1:{dead_port()}/")) == "Connection refused"


def test_distcc_host_probe(dcc: Distccd) -> None:
    assert probe_host(parse_distcc_host(dcc.host)) is None
    assert probe_host(parse_distcc_host(f"127.0.0.1:{dead_port()}/2")) == "Connection refused"
    assert probe_host(parse_distcc_host("localhost/2")) is None  # runs here: nothing to probe


def test_plan_warns_once_per_unreachable_service(redis: Redis, dcc: Distccd, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="mkspawn")
    dead = f"redis://:pw@127.0.0.1:{dead_port()}"
    down = f"127.0.0.1:{dead_port()}/3"
    plan = plan_farm(BuildSettings(remote_cache=dead, remote_only=True, distcc_hosts=[down, dcc.host,
                                                                                       "localhost/1"]),
                     tmp_path, ccache=True)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warned == [f"kernel: remote cache redis://***@127.0.0.1:{dead.rsplit(':', 1)[1]} is unreachable "
                      "(Connection refused); building with the local cache only",
                      f"kernel: distcc host unreachable: {down} (Connection refused); left out of this build"]
    assert "CCACHE_REMOTE_STORAGE" not in plan.env and "CCACHE_REMOTE_ONLY" not in plan.env
    assert plan.env["DISTCC_HOSTS"] == f"{dcc.host} localhost/1" and plan.distcc
    assert plan.env["DISTCC_BACKOFF_PERIOD"] == "5"
    assert plan.jobs == 3  # the live hosts' slots: 2 on distccd, 1 here
    assert Path(plan.env["DISTCC_DIR"]).is_dir()  # without it distcc runs every job locally
    assert plan.env["CCACHE_STATSLOG"] == str(tmp_path / STATS_LOG_NAME)

    caplog.clear()
    plan = plan_farm(BuildSettings(remote_cache=redis.url + "|read-only", remote_only=True), tmp_path, ccache=True)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    assert plan.env["CCACHE_REMOTE_STORAGE"] == redis.url + "|read-only" and plan.env["CCACHE_REMOTE_ONLY"] == "1"
    assert plan.jobs is None and not plan.distcc

    plan = plan_farm(BuildSettings(distcc_hosts=[down]), tmp_path, ccache=True)
    assert plan.jobs is None  # every host down: a local build's job count
    assert plan.env["DISTCC_HOSTS"] == down and "DISTCC_BACKOFF_PERIOD" not in plan.env  # distcc's own fallback
    plan = plan_farm(BuildSettings(remote_cache=redis.url), tmp_path, ccache=False)
    assert plan.env == {} and "ccache is not installed" in caplog.records[-1].getMessage()


def compile_all(work: Path, env: dict[str, str]) -> None:
    for name, text in SOURCES.items():
        (work / name).write_text(text)
        subprocess.run(["ccache", "gcc", "-O2", "-c", name, "-o", name[:-2] + ".o"], cwd=work, check=True,
                       env={"PATH": os.environ["PATH"], "HOME": str(work), **env})


def test_figures_from_real_ccache_and_redis(redis: Redis, tmp_path: Path) -> None:
    need("ccache")
    redis.command("FLUSHALL")
    base = {"CCACHE_REMOTE_STORAGE": redis.url, "CCACHE_BASEDIR": str(tmp_path)}
    runs = {}
    for name in ("cold", "remote", "local", "corrupt"):
        work = tmp_path / name
        work.mkdir()
        ccache_dir = tmp_path / ("local-cache" if name in ("remote", "local") else f"{name}-cache")
        if name == "corrupt":
            for key in list(redis.keys()):
                value = bytearray(redis.command("GET", key))  # type: ignore[arg-type]
                value[len(value) // 2] ^= 0xFF
                redis.command("SET", key, bytes(value))
        env = {**base, "CCACHE_DIR": str(ccache_dir), "CCACHE_STATSLOG": str(work / STATS_LOG_NAME)}
        compile_all(work, env)
        if name == "cold":  # a kbuild compiler-option probe: a call, not an object
            subprocess.run(["ccache", "gcc", "-Werror", "-c", "-x", "c", "/dev/null", "-o", "probe.o"], cwd=work,
                           check=True, env={"PATH": os.environ["PATH"], **env})
        runs[name] = read_stats_log(work / STATS_LOG_NAME)
    n = len(SOURCES)
    assert (runs["cold"].misses, runs["cold"].compiles, runs["cold"].uncacheable) == (n, n, 1)
    assert (runs["remote"].remote_hits, runs["remote"].local_hits) == (n, 0)
    assert (runs["local"].local_hits, runs["local"].remote_hits) == (n, 0)
    assert (runs["corrupt"].misses, runs["corrupt"].rejected, runs["corrupt"].remote_hits) == (n, n, 0)
    assert "remote entries refused as corrupt" in runs["corrupt"].describe()
    counters = ccache_counters(tmp_path / "local-cache")
    assert counters["remote_storage_hit"] == n and counters["local_storage_hit"] == n


def test_figures_from_real_distcc(dcc: Distccd, tmp_path: Path) -> None:
    need("ccache", "distcc")
    before = dcc.compiled()
    (tmp_path / "state").mkdir()
    env = {"CCACHE_DIR": str(tmp_path / "cache"), "CCACHE_PREFIX": "distcc", "DISTCC_DIR": str(tmp_path / "state"),
           "DISTCC_LOG": str(tmp_path / DISTCC_LOG_NAME)}
    compile_all(tmp_path, {**env, "DISTCC_HOSTS": dcc.host})
    figures = read_distcc_log(tmp_path / DISTCC_LOG_NAME)
    assert figures.remote == len(SOURCES) == dcc.compiled() - before
    assert figures.by_host == {dcc.host: len(SOURCES)} and figures.fallbacks == 0

    (tmp_path / DISTCC_LOG_NAME).unlink()
    compile_all(tmp_path, {**env, "CCACHE_DIR": str(tmp_path / "cache2"), "DISTCC_HOSTS": f"127.0.0.1:{dead_port()}"})
    figures = read_distcc_log(tmp_path / DISTCC_LOG_NAME)
    assert figures.remote == 0 and figures.local == len(SOURCES) and figures.fallbacks >= 1


def test_a_redis_password_written_with_a_colon_reaches_ccache(redis: Redis, tmp_path: Path) -> None:
    """ccache 4.7 ignores the password of redis://:PASSWORD@HOST (every command then fails
    NOAUTH and nothing is stored); the plan hands it over in the form ccache reads."""
    need("ccache")
    redis.command("FLUSHALL")
    redis.command("CONFIG", "SET", "requirepass", "pw")
    try:
        plan = plan_farm(BuildSettings(remote_cache=f"redis://:pw@127.0.0.1:{redis.port}/0"), tmp_path, ccache=True)
        assert plan.env["CCACHE_REMOTE_STORAGE"] == f"redis://pw@127.0.0.1:{redis.port}/0"
        compile_all(tmp_path, {**plan.env, "CCACHE_DIR": str(tmp_path / "cache")})
        stored = redis.command("DBSIZE", password="pw")
    finally:
        redis.command("CONFIG", "SET", "requirepass", "", password="pw")
    assert stored == 2 * len(SOURCES)  # a manifest and a result per object


def stand_in_tree(tmp_path: Path) -> Path:
    """A kernel-shaped tree whose Makefile compiles one C file with make's $(CC) (ccache, and
    distcc through it) and records what the compile and the configuration steps were given."""
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Kconfig").write_text("")
    (tree / "one.c").write_text("int one(int x) { return x + 1; }\n")
    record = ('env | grep -E "^(CCACHE_REMOTE|CCACHE_PREFIX|DISTCC_HOSTS|DISTCC_BACKOFF)" | sort > $(O)/$@.env; '
              'echo "$(MAKEFLAGS)" > $(O)/$@.flags')
    (tree / "Makefile").write_text(
        f"tinyconfig:\n\tprintf 'CONFIG_A=y\\n' > $(O)/.config\n\t@{record}\n"
        f"olddefconfig:\n\t@{record}\n"
        "bzImage:\n"
        f"\t@{record}\n"
        "\t@echo '  CC      one.o'\n"
        "\t$(CC) -c $(CURDIR)/one.c -o $(O)/one.o\n"
        "\t@mkdir -p $(O)/arch/x86/boot $(O)/include/config\n"
        "\t@cp $(O)/one.o $(O)/arch/x86/boot/bzImage; echo elf > $(O)/vmlinux; echo map > $(O)/System.map\n"
        "\t@echo 9.9.9-farm > $(O)/include/config/kernel.release\n"
        "\t@cp $(O)/*.env $(O)/*.flags $(CURDIR)/../\n"
    )
    return tree


def test_kernel_stage_hands_the_farm_to_the_compile_only(redis: Redis, dcc: Distccd, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    """Real make, ccache, distccd and Redis on a one-object stand-in tree: the compile gets
    the remote cache, distcc and a job count from the hosts; configuring gets none of it;
    the key, the tools and the image are what a plain build gives."""
    need("make", "ccache", "distcc")
    from mkimage.kernel.build import build_kernel
    from mkimage.recipe.model import KernelSource, KernelSpec

    caplog.set_level(logging.DEBUG, logger="mkspawn")
    spec = KernelSpec(source=KernelSource(dir=stand_in_tree(tmp_path)), options={"A": "y"})
    url = f"redis://:Secr3t@127.0.0.1:{redis.port}"
    farm = BuildSettings(remote_cache=url, distcc_hosts=[dcc.host, "localhost/1"])
    before = dcc.compiled()
    redis.command("CONFIG", "SET", "requirepass", "Secr3t")
    try:
        built = build_kernel(spec, arch="x86_64", cache_root=tmp_path / "farm-cache", source_date_epoch=0,
                             use_ccache=True, farm=farm)
        stored = redis.command("DBSIZE", password="Secr3t")
    finally:
        redis.command("CONFIG", "SET", "requirepass", "", password="Secr3t")
    compile_env = (tmp_path / "bzImage.env").read_text().splitlines()
    assert compile_env == [f"CCACHE_PREFIX={shutil.which('distcc')}",
                           f"CCACHE_REMOTE_STORAGE=redis://Secr3t@127.0.0.1:{redis.port}",
                           "DISTCC_BACKOFF_PERIOD=5", f"DISTCC_HOSTS={dcc.host} localhost/1"]
    assert (tmp_path / "olddefconfig.env").read_text() == ""  # configuring stays local
    assert "-j3" in (tmp_path / "bzImage.flags").read_text().split()  # distccd's 2 slots and 1 here
    assert dcc.compiled() == before + 1 and isinstance(stored, int) and stored >= 2
    out = built.image.parent
    assert read_distcc_log(out / DISTCC_LOG_NAME).by_host == {dcc.host: 1}
    assert read_stats_log(out / STATS_LOG_NAME).misses == 1
    messages = [r.getMessage() for r in caplog.records]
    assert f"kernel: remote cache redis://***@127.0.0.1:{redis.port}" in messages
    # Not even the --debug command line shows the password.
    assert not [m for m in messages if "Secr3t" in m]
    assert any(f"'CCACHE_REMOTE_STORAGE=redis://***@127.0.0.1:{redis.port}'" in m for m in messages
               if m.startswith("kernel: $ ") and m.endswith(" bzImage"))
    assert "kernel: ccache: 1 compiles: 0 local hits, 0 remote hits, 1 misses, 0 remote errors" in messages
    assert f"kernel: distcc: 1 objects compiled remotely (1 on {dcc.host}), 0 locally, 0 of them after a host " \
           "failed or was down" in messages
    assert set(built.tools) == {"make", "gcc", "ld", "ccache"}

    plain = build_kernel(spec, arch="x86_64", cache_root=tmp_path / "plain-cache", source_date_epoch=0,
                         use_ccache=True)
    assert plain.cache_key == built.cache_key and plain.tools == built.tools
    assert plain.image.read_bytes() == built.image.read_bytes()
