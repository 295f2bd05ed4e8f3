"""Which proxy the environment names for a URL: curl's and requests' reading of
HTTP(S)_PROXY and NO_PROXY, with loopback direct while NO_PROXY is unset."""

from __future__ import annotations

import base64

import pytest

from mkimage.errors import UsageError
from mkimage.registry.proxy import proxies_from_env

PROXY = "http://proxy.corp.example:3128"


def via(env: dict[str, str], url_host: str, port: int | None = None, scheme: str = "https") -> str | None:
    proxy = proxies_from_env(env).for_url(scheme, url_host, port)
    return proxy.shown if proxy is not None else None


# (NO_PROXY, host, port, proxied?)
NO_PROXY_TABLE = [
    ("example.com", "example.com", None, False),
    ("example.com", "registry.example.com", None, False),
    ("example.com", "notexample.com", None, True),
    (".example.com", "example.com", None, False),
    (".example.com", "a.b.example.com", None, False),
    ("*.example.com", "a.example.com", None, False),
    ("EXAMPLE.com", "Registry.Example.COM", None, False),
    ("example.com", "example.com.", None, False),  # a fully qualified name
    ("example.com:5000", "example.com", 5000, False),
    ("example.com:5000", "example.com", 443, True),
    ("example.com:443", "example.com", None, False),  # the scheme's default port
    ("*", "anything.example", None, False),
    ("a.example, *", "anything.example", None, False),
    (" a.example , b.example ", "b.example", None, False),
    ("10.0.0.0/8", "10.1.2.3", None, False),
    ("10.0.0.0/8", "11.1.2.3", None, True),
    ("10.1.2.3", "10.1.2.3", None, False),
    ("10.1.2.3:5000", "10.1.2.3", 5000, False),
    ("10.1.2.3:5000", "10.1.2.3", 5001, True),
    (".2.3", "10.1.2.3", None, True),  # an address is never matched as a name suffix (curl)
    ("::1", "::1", None, False),
    ("[::1]", "[::1]", None, False),
    ("[fd00::1]:5000", "fd00::1", 5000, False),
    ("fd00::/8", "fd12::7", None, False),
    ("example.com", "10.1.2.3", None, True),
    ("", "127.0.0.1", None, True),  # set and empty: loopback through the proxy too
    ("", "localhost", None, True),
    ("example.com", "127.0.0.1", None, True),  # a list of one's own replaces the loopback default
]


@pytest.mark.parametrize(("no_proxy", "host", "port", "proxied"), NO_PROXY_TABLE)
def test_no_proxy(no_proxy: str, host: str, port: int | None, proxied: bool) -> None:
    assert (via({"HTTPS_PROXY": PROXY, "NO_PROXY": no_proxy}, host, port) is not None) == proxied


@pytest.mark.parametrize("host", ["localhost", "registry.localhost", "127.0.0.1", "127.8.9.10", "::1", "[::1]"])
def test_loopback_is_direct_while_no_proxy_is_unset(host: str) -> None:
    assert via({"HTTPS_PROXY": PROXY}, host) is None
    assert via({"HTTPS_PROXY": PROXY}, "registry.example") == PROXY


def test_each_scheme_has_its_own_variable() -> None:
    env = {"HTTPS_PROXY": "http://tls-proxy:1", "HTTP_PROXY": "http://plain-proxy:2"}
    assert via(env, "r.example", scheme="https") == "http://tls-proxy:1"
    assert via(env, "r.example", scheme="http") == "http://plain-proxy:2"
    assert via({"HTTP_PROXY": PROXY}, "r.example", scheme="https") is None
    assert via({"HTTPS_PROXY": PROXY}, "r.example", scheme="http") is None
    assert via({"ALL_PROXY": PROXY}, "r.example", scheme="http") == PROXY
    assert via({"all_proxy": PROXY, "HTTPS_PROXY": "http://tls-proxy:1"}, "r.example") == "http://tls-proxy:1"


def test_lower_case_wins_and_empty_means_none() -> None:
    assert via({"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:2"}, "r.example") == "http://lower:1"
    assert via({"https_proxy": "", "HTTPS_PROXY": "http://upper:2"}, "r.example") == "http://upper:2"
    assert via({"HTTPS_PROXY": "  "}, "r.example") is None
    assert via({"HTTPS_PROXY": PROXY, "no_proxy": "r.example", "NO_PROXY": ""}, "r.example") is None


def test_http_proxy_upper_case_is_ignored_in_a_cgi_request() -> None:
    env = {"HTTP_PROXY": PROXY, "REQUEST_METHOD": "GET"}
    assert via(env, "r.example", scheme="http") is None
    assert via({**env, "http_proxy": "http://mine:1"}, "r.example", scheme="http") == "http://mine:1"


def test_proxy_url_forms_and_credentials() -> None:
    proxy = proxies_from_env({"HTTPS_PROXY": "http://us%40er:p%3Ass@proxy.example:3128/"}).for_url(
        "https", "r.example", None)
    assert proxy is not None
    assert (proxy.host, proxy.port, proxy.netloc) == ("proxy.example", 3128, "proxy.example:3128")
    assert proxy.authorization == "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert proxy.shown == "http://us@er:***@proxy.example:3128"
    bare = proxies_from_env({"HTTPS_PROXY": "proxy.example:3128"}).for_url("https", "r.example", None)
    assert bare is not None and (bare.host, bare.port, bare.authorization) == ("proxy.example", 3128, None)
    default = proxies_from_env({"HTTPS_PROXY": "http://proxy.example"}).for_url("https", "r.example", None)
    assert default is not None and default.port == 80
    v6 = proxies_from_env({"HTTPS_PROXY": "http://[fd00::3]:3128"}).for_url("https", "r.example", None)
    assert v6 is not None and v6.netloc == "[fd00::3]:3128"


@pytest.mark.parametrize("value", ["socks5://u:hunter2@proxy:1080", "https://u:hunter2@proxy:3128",
                                   "http://u:hunter2@proxy:notaport", "http://u:hunter2@:3128"])
def test_unusable_proxy_url(value: str) -> None:
    with pytest.raises(UsageError) as caught:
        proxies_from_env({"https_proxy": value})
    assert caught.value.code == "bad-value"
    assert caught.value.message.startswith("$https_proxy (")
    assert "hunter2" not in caught.value.message and "u:***@" in caught.value.message
