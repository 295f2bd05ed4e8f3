"""push and pull through a real HTTP proxy (Debian's tinyproxy) as CI runners behind a
corporate proxy do: HTTPS registries through a CONNECT tunnel, plain-HTTP ones in
absolute form, NO_PROXY, proxy credentials, and a proxy that refuses or is down.

The registries here listen on 127.0.0.1, which is not proxied while NO_PROXY is unset
(docs/bundle-format.md, "Proxies"); the tests set ``NO_PROXY=`` (empty) as a user would to send loopback
through the proxy as well."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_mkspawn as mkspawn
from tests.registry.conftest import (
    PASSWORD,
    PROXY_PASSWORD,
    USER,
    HttpProxy,
    Registry,
    docker_config,
    free_port,
    registry_port,
    running_proxy,
)


def tls_env(tmp_path: Path, registry: Registry, **proxy_env: str) -> dict[str, str]:
    home = tmp_path / "home"
    docker_config(home / ".docker", registry.host, USER, PASSWORD)
    return {"HOME": str(home), **proxy_env}


def one_error_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def round_trip(tmp_path: Path, ref: str, bundle: Path, trust: Path, env: dict[str, str], *args: object) -> None:
    done = mkspawn("push", bundle, ref, *args, env=env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "pulled.mkb"
    done = mkspawn("pull", ref, "-o", out, "--trust", trust, *args, env=env)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == bundle.read_bytes()


def test_tls_registry_through_a_connect_tunnel(tmp_path: Path, tls_registry: Registry, http_proxy: HttpProxy,
                                               bundles: dict[str, Path], trust: Path) -> None:
    assert tls_registry.ca_cert is not None
    start = http_proxy.offset()
    # Lower-case names, as most CI images set them; --ca-cert still checks the registry's certificate.
    env = tls_env(tmp_path, tls_registry, https_proxy=http_proxy.url(), no_proxy="")
    round_trip(tmp_path, f"{tls_registry.host}/proxied/demo:1", bundles["demo"], trust, env,
               "--ca-cert", tls_registry.ca_cert)
    carried = http_proxy.requests(start)
    assert carried and all(line.startswith(f"CONNECT {tls_registry.host} ") for line in carried), carried
    # Dozens of requests, a handful of tunnels: connections through the proxy are kept
    # (push has one beside the main one for its largest blob).
    assert len(carried) <= 6, carried


def test_plain_registry_in_absolute_form(tmp_path: Path, plain_registry: Registry, http_proxy: HttpProxy,
                                         bundles: dict[str, Path], trust: Path) -> None:
    start = http_proxy.offset()
    env = {"HTTP_PROXY": http_proxy.url(), "NO_PROXY": ""}
    round_trip(tmp_path, f"{plain_registry.host}/proxied/demo:1", bundles["demo"], trust, env, "--insecure")
    carried = http_proxy.requests(start)
    methods = {line.split()[0] for line in carried}
    assert {"HEAD", "POST", "PUT", "GET"} <= methods, carried
    assert all(line.split()[1].startswith(f"http://{plain_registry.host}/v2/") for line in carried), carried


@pytest.mark.parametrize("no_proxy", [None, "127.0.0.1", "elsewhere.example, 127.0.0.1:{port}", "*", "127.0.0.0/8"],
                         ids=["unset-loopback", "ip", "host-port", "star", "cidr"])
def test_no_proxy_goes_direct(tmp_path: Path, tls_registry: Registry, http_proxy: HttpProxy,
                              bundles: dict[str, Path], trust: Path, no_proxy: str | None) -> None:
    assert tls_registry.ca_cert is not None
    start = http_proxy.offset()
    env = tls_env(tmp_path, tls_registry, HTTPS_PROXY=http_proxy.url())
    if no_proxy is not None:
        env["NO_PROXY"] = no_proxy.format(port=registry_port(tls_registry))
    round_trip(tmp_path, f"{tls_registry.host}/direct/demo:1", bundles["demo"], trust, env,
               "--ca-cert", tls_registry.ca_cert)
    assert http_proxy.requests(start) == []


def test_proxy_credentials_from_the_url(tmp_path: Path, tls_registry: Registry, auth_proxy: HttpProxy,
                                        bundles: dict[str, Path], trust: Path) -> None:
    assert tls_registry.ca_cert is not None
    start = auth_proxy.offset()
    env = tls_env(tmp_path, tls_registry, HTTPS_PROXY=auth_proxy.url(), NO_PROXY="")
    round_trip(tmp_path, f"{tls_registry.host}/proxy-auth/demo:1", bundles["demo"], trust, env,
               "--ca-cert", tls_registry.ca_cert)
    assert auth_proxy.requests(start)


@pytest.mark.parametrize("password", [None, "wrong-Pr0xy-pass"], ids=["no-credentials", "wrong-password"])
def test_proxy_refusing_the_credentials_is_one_line_without_the_password(
        tmp_path: Path, tls_registry: Registry, auth_proxy: HttpProxy, bundles: dict[str, Path],
        password: str | None) -> None:
    assert tls_registry.ca_cert is not None
    url = f"http://127.0.0.1:{auth_proxy.port}" if password is None else auth_proxy.url(password)
    env = tls_env(tmp_path, tls_registry, HTTPS_PROXY=url, NO_PROXY="")
    done = mkspawn("-v", "push", bundles["demo"], f"{tls_registry.host}/proxy-auth/refused:1",
                   "--ca-cert", tls_registry.ca_cert, env=env)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    error = done.stderr.splitlines()[-1]
    shown = f"http://127.0.0.1:{auth_proxy.port}" if password is None else \
        f"http://proxy-user:***@127.0.0.1:{auth_proxy.port}"
    assert error.startswith(f"mkspawn: error: {tls_registry.host}: cannot connect: proxy {shown} refused the "
                            "tunnel: "), error
    assert error.endswith("[registry-unreachable]"), error
    assert ("407" in error) if password is None else ("401" in error or "407" in error)
    for secret in (PROXY_PASSWORD, "wrong-Pr0xy-pass", PASSWORD):
        assert secret not in done.stderr and secret not in done.stdout


def test_plain_registry_proxy_wants_credentials(tmp_path: Path, plain_registry: Registry, auth_proxy: HttpProxy,
                                                bundles: dict[str, Path]) -> None:
    """Without CONNECT the proxy answers the request itself with 407."""
    env = {"HTTP_PROXY": f"http://127.0.0.1:{auth_proxy.port}", "NO_PROXY": ""}
    line = one_error_line(mkspawn("push", bundles["demo"], f"{plain_registry.host}/p/demo:1", "--insecure",
                                  env=env), 1)
    assert line == (f"mkspawn: error: {plain_registry.host}: cannot connect: proxy http://127.0.0.1:{auth_proxy.port} "
                    "refused the request: 407 Proxy Authentication Required [registry-unreachable]")


def test_proxy_refusing_connect_to_the_port(tmp_path: Path, tls_registry: Registry, bundles: dict[str, Path]) -> None:
    """tinyproxy allows CONNECT to the listed ports only (443 in Debian's config): 403."""
    assert tls_registry.ca_cert is not None
    with running_proxy(tmp_path / "proxy", [443]) as proxy:
        env = tls_env(tmp_path, tls_registry, HTTPS_PROXY=proxy.url(), NO_PROXY="")
        line = one_error_line(mkspawn("push", bundles["demo"], f"{tls_registry.host}/p/demo:1",
                                      "--ca-cert", tls_registry.ca_cert, env=env), 1)
    assert line.startswith(f"mkspawn: error: {tls_registry.host}: cannot connect: proxy "
                           f"http://127.0.0.1:{proxy.port} refused the tunnel: 403 "), line
    assert line.endswith("[registry-unreachable]")


@pytest.mark.parametrize("scheme", ["https", "http"])
def test_proxy_down(tmp_path: Path, tls_registry: Registry, plain_registry: Registry, trust: Path,
                    scheme: str) -> None:
    registry = tls_registry if scheme == "https" else plain_registry
    port = free_port()  # nothing listens there
    env = {"HTTPS_PROXY": f"http://{USER}:{PROXY_PASSWORD}@127.0.0.1:{port}",
           "HTTP_PROXY": f"http://{USER}:{PROXY_PASSWORD}@127.0.0.1:{port}", "NO_PROXY": ""}
    args = ["--ca-cert", str(tls_registry.ca_cert)] if scheme == "https" else ["--insecure"]
    out = tmp_path / "pulled.mkb"
    line = one_error_line(mkspawn("pull", f"{registry.host}/down/demo:1", "-o", out, "--trust", trust, *args,
                                  env=env), 1)
    assert line == (f"mkspawn: error: {registry.host}: cannot connect: proxy http://{USER}:***@127.0.0.1:{port}: "
                    "Connection refused [registry-unreachable]")
    assert not out.exists()


def test_unusable_proxy_url_is_bad_input(tmp_path: Path, tls_registry: Registry, bundles: dict[str, Path]) -> None:
    env = {"HTTPS_PROXY": f"socks5://{USER}:{PROXY_PASSWORD}@127.0.0.1:1080"}
    line = one_error_line(mkspawn("push", bundles["demo"], f"{tls_registry.host}/p/demo:1", env=env), 2)
    assert line == (f"mkspawn: error: $HTTPS_PROXY (socks5://{USER}:***@127.0.0.1:1080): only http:// proxies are "
                    "supported (CONNECT tunnels https through them) [bad-value]")
