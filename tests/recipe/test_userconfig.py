"""The machine's config.toml: found like the docs say, validated like a recipe (file:line,
[build] key, exit 2), and never showing a credential."""

from __future__ import annotations

from pathlib import Path

import pytest

from mkimage.errors import RecipeError
from mkimage.recipe.userconfig import (
    BuildSettings,
    load_user_config,
    parse_distcc_host,
    parse_remote_cache,
    redact,
    with_overrides,
)
from tests.conftest import run_mkspawn

REPO = Path(__file__).resolve().parents[2]
MINIMAL = REPO / "recipes" / "minimal.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def test_absent_default_file_means_defaults(tmp_path: Path) -> None:
    loaded = load_user_config(env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert loaded.path is None and loaded.settings == BuildSettings()
    assert not loaded.settings.farm


def test_default_file_then_env_then_option(tmp_path: Path) -> None:
    default = tmp_path / "mkspawn" / "config.toml"
    default.parent.mkdir()
    default.write_text("[build]\njobs = 3\n")
    named = write(tmp_path, '[build]\njobs = 5\ndistcc_hosts = ["localhost/2", "10.1.2.3:3700/8,lzo"]\n')
    env = {"XDG_CONFIG_HOME": str(tmp_path)}
    assert load_user_config(env=env).settings.jobs == 3
    loaded = load_user_config(env={**env, "MKSPAWN_CONFIG": str(named)})
    assert loaded.path == named and loaded.settings.jobs == 5
    assert [h.slots for h in loaded.settings.hosts()] == [2, 8]
    assert load_user_config(default, env={**env, "MKSPAWN_CONFIG": str(named)}).settings.jobs == 3


@pytest.mark.parametrize("origin", ["--config", "$MKSPAWN_CONFIG"])
def test_a_named_config_file_must_exist(tmp_path: Path, origin: str) -> None:
    gone = tmp_path / "nope.toml"
    with pytest.raises(RecipeError) as e:
        if origin == "--config":
            load_user_config(gone, env={})
        else:
            load_user_config(env={"MKSPAWN_CONFIG": str(gone)})
    assert e.value.render() == f"{origin}: no such config file: {gone} [no-such-file]"


@pytest.mark.parametrize(("text", "line", "message"), [
    ('[build]\njobs = "4"\n', 2, "[build] jobs: expected an integer, got '4' [bad-type]"),
    ("[build]\njobs = 0\n", 2, "[build] jobs: expected 1..1024, got 0 [bad-value]"),
    ("[build]\nremote_only = 1\n", 2, "[build] remote_only: expected a boolean, got 1 [bad-type]"),
    ("[build]\n\nremote_cahce = 'redis://x'\n", 3, "[build] remote_cahce: unknown key 'remote_cahce'; did you "
     "mean 'remote_cache'? [unknown-key]"),
    ("[bulid]\n", 1, "bulid: unknown key 'bulid'; did you mean 'build'? [unknown-key]"),
    ('[build]\ndistcc_hosts = "localhost/2"\n', 2, "[build] distcc_hosts: expected list of string, got "
     "'localhost/2' [bad-type]"),
    ('[build]\ndistcc_hosts = ["box/2,cpp"]\n', 2, "[build] distcc_hosts: 'box/2,cpp': pump mode (,cpp) "
     "preprocesses on the server; mkspawn keeps preprocessing local so the objects stay reproducible [bad-value]"),
    ('[build]\ndistcc_hosts = ["--randomize"]\n', 2, "[build] distcc_hosts: names no host (only options); add "
     "localhost/N or HOST:PORT/N [bad-value]"),
    ('[build]\nremote_cache = "https://cache.example/x"\n', 2, "[build] remote_cache: ccache's http backend does "
     "not support HTTPS ('https://cache.example/x'); use a TLS-terminating proxy on the runner and an http:// URL "
     "[bad-value]"),
    ('[build]\nremote_cache = "redis://h|shards=a,b"\n', 2, "[build] remote_cache: the shards attribute is not "
     "supported: give one server per URL (mkspawn probes the server before the build) [bad-value]"),
    ("[build\n", 1, "invalid TOML: Expected ']' at the end of a table declaration [toml-syntax]"),
])
def test_mistakes_name_file_line_and_key(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(RecipeError) as e:
        load_user_config(path, env={})
    assert e.value.render() == f"{path}:{line}: {message}"


def test_credentials_never_reach_a_message(tmp_path: Path) -> None:
    path = write(tmp_path, '[build]\nremote_cache = "redis://admin:pa55word@cache:99999/0"\n')
    with pytest.raises(RecipeError) as e:
        load_user_config(path, env={})
    assert "pa55word" not in e.value.render() and "admin" not in e.value.render()
    assert "redis://***@cache:99999/0" in e.value.render()
    settings = BuildSettings(remote_cache="http://u:pw@h/c|bearer-token=tok3n|read-only")
    assert "pw" not in repr(settings) and "tok3n" not in repr(settings)
    assert redact("http://u:pw@h/c|bearer-token=tok3n|read-only") == "http://***@h/c|bearer-token=***|read-only"


def test_remote_cache_urls_as_ccache_reads_them() -> None:
    r = parse_remote_cache("redis://s3cret@cache.example/2|read-only|connect-timeout=50")
    assert (r.host, r.port, r.username, r.password, r.read_only) == ("cache.example", 6379, None, "s3cret", True)
    r = parse_remote_cache("redis://user:pw@10.0.0.1:7000")
    assert (r.host, r.port, r.username, r.password, r.read_only) == ("10.0.0.1", 7000, "user", "pw", False)
    r = parse_remote_cache("redis://:pw@cache:7000/1|read-only")
    assert (r.username, r.password, r.ccache_url) == (None, "pw", "redis://pw@cache:7000/1|read-only")
    r = parse_remote_cache("redis+unix:/run/redis.sock")
    assert r.socket_path == "/run/redis.sock" and r.host is None
    r = parse_remote_cache("http://cache.example:8080/ccache|layout=bazel|keep-alive")
    assert (r.host, r.port, r.path, r.attributes) == ("cache.example", 8080, "/ccache",
                                                     {"layout": "bazel", "keep-alive": ""})
    for bad in ("file:/srv/cache", "redis://", "redis://h:port", "redis://h/x", "http://h|read-only=maybe",
                "http://h|layout=tree", "redis://h|layout=bazel", "redis://a redis://b"):
        with pytest.raises(ValueError):
            parse_remote_cache(bad)


@pytest.mark.parametrize(("spec", "kind", "host", "port", "slots"), [
    ("localhost", "local", "localhost", 0, 2),
    ("localhost/3", "local", "localhost", 0, 3),
    ("build1", "tcp", "build1", 3632, 4),
    ("build1.example:4000/16,lzo", "tcp", "build1.example", 4000, 16),
    ("10.0.0.7/6:4001", "tcp", "10.0.0.7", 4001, 6),
    ("[::1]:3633/2", "tcp", "::1", 3633, 2),
    ("ci@farm.example/8:/opt/bin/distccd,lzo", "ssh", "farm.example", 3632, 8),
    ("--localslots=4", "option", None, 3632, 0),
])
def test_distcc_host_syntax(spec: str, kind: str, host: str | None, port: int, slots: int) -> None:
    h = parse_distcc_host(spec)
    assert (h.kind, h.host, h.port, h.slots) == (kind, host, port, slots)


@pytest.mark.parametrize("spec", ["", "a b", "host/0", "host:70000", "host,gzip", "+zeroconf", "-bad", "host/x"])
def test_bad_distcc_hosts_are_refused(spec: str) -> None:
    with pytest.raises(ValueError):
        parse_distcc_host(spec)


def test_command_line_overrides_the_file() -> None:
    base = BuildSettings(remote_cache="redis://a", distcc_hosts=["localhost/2"], jobs=2)
    assert with_overrides(base) == base
    changed = with_overrides(base, remote_cache="", distcc_hosts="b/4 c:4000/8", jobs=9)
    assert changed == BuildSettings(remote_cache=None, distcc_hosts=["b/4", "c:4000/8"], jobs=9)
    with pytest.raises(RecipeError) as e:
        with_overrides(base, distcc_hosts="b,cpp")
    assert e.value.render().startswith("--distcc-hosts: 'b,cpp': pump mode")


def test_cli_refuses_a_bad_config_in_one_line_with_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, "[build]\nremote_cache = 'redis://:pw@cache:6379'\njobs = -1\n")
    done = run_mkspawn("build", MINIMAL, "-o", tmp_path / "x.mkb", env={"MKSPAWN_CONFIG": str(path)})
    assert done.returncode == 2
    assert done.stderr == f"mkspawn: error: {path}:3: [build] jobs: expected 1..1024, got -1 [bad-value]\n"
    done = run_mkspawn("build", MINIMAL, "-o", tmp_path / "x.mkb", "--remote-cache", "redis://:pw@cache:x")
    assert (done.returncode, done.stderr) == (2, "mkspawn: error: --remote-cache: bad port in "
                                                 "'redis://***@cache:x' [bad-value]\n")
    done = run_mkspawn("build", MINIMAL, "-o", tmp_path / "x.mkb", "--config", tmp_path / "absent.toml")
    assert (done.returncode, done.stderr) == (2, f"mkspawn: error: --config: no such config file: "
                                                 f"{tmp_path / 'absent.toml'} [no-such-file]\n")
    assert not (tmp_path / "x.mkb").exists()
