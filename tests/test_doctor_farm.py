"""`mkspawn doctor` on the build farm of config.toml: the remote cache and distcc hosts,
probed for real (redis-server, distccd), credentials redacted, and the local ccache's
running remote counters."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import run_mkspawn
from tests.kernel.farm_servers import Distccd, Redis, dead_port, distccd, need, redis_server


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Redis, Distccd]]:
    work = tmp_path_factory.mktemp("doctor-farm")
    with redis_server(work) as redis, distccd(work) as dcc:
        redis.command("CONFIG", "SET", "requirepass", "pa55")
        yield redis, dcc


def doctor(tmp_path: Path, *args: object) -> subprocess.CompletedProcess[str]:
    return run_mkspawn("doctor", *args, env={"XDG_CACHE_HOME": str(tmp_path / "cache")}, timeout_s=120)


def test_reports_remote_cache_and_hosts_with_their_reachability(servers: tuple[Redis, Distccd],
                                                                 tmp_path: Path) -> None:
    need("ccache")
    redis, dcc = servers
    down = f"127.0.0.1:{dead_port()}/4"
    config = tmp_path / "config.toml"
    config.write_text(f'[build]\nremote_cache = "redis://:pa55@127.0.0.1:{redis.port}|read-only"\n'
                      f'distcc_hosts = ["{dcc.host}", "{down}", "localhost/1"]\n')
    # The local ccache has got one object from the remote cache so far.
    ccache_dir = tmp_path / "cache" / "mkspawn" / "ccache"
    (tmp_path / "a.c").write_text("int a(void) { return 7; }\n")
    for cache in (tmp_path / "filler", ccache_dir):
        subprocess.run(["ccache", "gcc", "-c", "a.c"], cwd=tmp_path, check=True,
                       env={"PATH": os.environ["PATH"], "CCACHE_DIR": str(cache), "CCACHE_REMOTE_STORAGE": f"redis://pa55@127.0.0.1:{redis.port}"})
    done = doctor(tmp_path, "--json", "--config", config)
    assert done.returncode == 0, done.stderr
    farm = json.loads(done.stdout)["farm"]
    assert farm["config"] == str(config) and farm["exists"] and farm["problem"] is None
    assert farm["remote_cache"] == {"url": f"redis://***@127.0.0.1:{redis.port}|read-only", "reachable": True,
                                    "problem": None}
    assert farm["distcc_hosts"] == [{"host": dcc.host, "reachable": True, "problem": None},
                                    {"host": down, "reachable": False, "problem": "Connection refused"},
                                    {"host": "localhost/1", "reachable": True, "problem": None}]
    assert farm["ccache_remote"]["remote_storage_hit"] == 1
    text = doctor(tmp_path, "--config", config).stdout
    assert "pa55" not in text and "pa55" not in done.stdout
    assert f"  remote cache redis://***@127.0.0.1:{redis.port}|read-only: reachable; so far 1 hits" in text
    assert f"{down}: unreachable (Connection refused)" in text


def test_a_bad_config_is_reported_not_raised(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("[build]\njobs = 0\n")
    done = run_mkspawn("doctor", "--json", env={"XDG_CACHE_HOME": str(tmp_path), "MKSPAWN_CONFIG": str(config)},
                       timeout_s=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["farm"]["problem"] == f"{config}:2: [build] jobs: expected 1..1024, got 0 [bad-value]"
    assert report["ok"] is False
