"""HTTP proxies from the environment, as curl and requests read them.

``https_proxy``/``HTTPS_PROXY`` for https URLs, ``http_proxy``/``HTTP_PROXY`` for plain
ones, ``all_proxy``/``ALL_PROXY`` for either when those are unset; the lower-case name
wins, and an empty value means none.  ``HTTP_PROXY`` is ignored when ``REQUEST_METHOD``
is set (a CGI request could set it from a ``Proxy:`` header: "httpoxy").

``no_proxy``/``NO_PROXY`` is a comma list of ``*`` (nothing is proxied), host names that
also match their subdomains (a leading ``.`` or ``*.`` changes nothing), IP addresses or
CIDR ranges (IPv6 with or without brackets), each optionally with ``:PORT``.  Unset, it
defaults to loopback (``localhost``, ``127.0.0.0/8``, ``::1``), which a proxy elsewhere
could not reach anyway, as docker and Go's clients do; set (even to an empty string) it
is the whole list, as with curl, so ``NO_PROXY=`` sends loopback through the proxy too.

Written here rather than taken from ``urllib.request``: that one reads ``os.environ``
only (we get the caller's environment), cannot tell an empty ``NO_PROXY`` from an unset
one, and knows no CIDR ranges.
"""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Mapping
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from mkimage.errors import UsageError

DEFAULT_NO_PROXY = "localhost,127.0.0.0/8,::1"
_DEFAULT_PORTS = {"http": 80, "https": 443}

# Records are NamedTuples, not frozen dataclasses: this module is imported by every push
# and pull: a frozen, slotted dataclass takes ~0.4 ms to create here, a NamedTuple ~0.1 ms.


class Proxy(NamedTuple):
    host: str  # a name, or an IP address (IPv6 without brackets)
    port: int
    authorization: str | None  # Proxy-Authorization from the URL's user:password
    shown: str  # the URL for messages: the password replaced by ***

    @property
    def netloc(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class _Bypass(NamedTuple):
    """One NO_PROXY entry: a domain (with its subdomains) or a network, and maybe a port."""

    domain: str | None
    network: _Network | None
    port: int | None

    def matches(self, host: str, address: _Address | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.network is not None:
            return address is not None and address in self.network
        if address is not None or self.domain is None:
            return False  # as curl: an address matches addresses and ranges, never as a name suffix
        return host == self.domain or host.endswith("." + self.domain)


class ProxyConfig(NamedTuple):
    """Which proxy, if any, carries a request to a URL; see the module docstring."""

    https: Proxy | None = None
    http: Proxy | None = None
    bypass_all: bool = False
    bypass: tuple[_Bypass, ...] = ()

    def for_url(self, scheme: str, host: str, port: int | None) -> Proxy | None:
        proxy = self.https if scheme == "https" else self.http
        if proxy is None or self.bypass_all:
            return None
        host = host.strip("[]").rstrip(".").lower()
        try:
            address: _Address | None = ipaddress.ip_address(host)
        except ValueError:
            address = None
        effective = port if port is not None else _DEFAULT_PORTS.get(scheme, 0)
        if any(entry.matches(host, address, effective) for entry in self.bypass):
            return None
        return proxy


def proxies_from_env(env: Mapping[str, str]) -> ProxyConfig:
    """The proxy settings in ``env``; a proxy URL that cannot be used is a usage error."""

    def first(*names: str) -> tuple[str, str] | None:
        for name in names:
            value = env.get(name, "").strip()
            if value:
                return name, value
        return None

    http_names = ["http_proxy"] if "REQUEST_METHOD" in env else ["http_proxy", "HTTP_PROXY"]
    https = first("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
    http = first(*http_names, "all_proxy", "ALL_PROXY")
    if https is None and http is None:
        return ProxyConfig()
    no_proxy = env.get("no_proxy", env.get("NO_PROXY", DEFAULT_NO_PROXY))
    entries = [e.strip().lower() for e in no_proxy.split(",") if e.strip()]
    return ProxyConfig(https=_parse_proxy(*https) if https else None, http=_parse_proxy(*http) if http else None,
                       bypass_all="*" in entries, bypass=tuple(_parse_bypass(e) for e in entries if e != "*"))


def _parse_proxy(name: str, value: str) -> Proxy:
    # As curl and requests do, a bare host:port is an http:// proxy.
    parts = urlsplit(value if "://" in value else f"http://{value}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else ""
    where = f"${name} ({_redacted(parts.scheme, parts.hostname, port, user)})"
    if parts.scheme != "http":
        raise UsageError(f"{where}: only http:// proxies are supported (CONNECT tunnels https through them)",
                         code="bad-value")
    if not parts.hostname or port == -1:
        raise UsageError(f"{where}: expected http://[USER:PASSWORD@]HOST[:PORT]", code="bad-value")
    port = port if port is not None else 80  # the URL's own default, as requests has it (curl: 1080)
    authorization = None
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        authorization = f"Basic {token}"
    return Proxy(parts.hostname, port, authorization, _redacted("http", parts.hostname, port, user))


def _redacted(scheme: str, host: str | None, port: int | None, user: str | None) -> str:
    """The proxy's URL with its password (never shown) replaced by ***, and no path."""
    shown_host = f"[{host}]" if host and ":" in host else host or "?"
    shown_port = f":{port}" if port is not None and port >= 0 else ""
    userinfo = f"{user}:***@" if user is not None else ""
    return f"{scheme}://{userinfo}{shown_host}{shown_port}"


def _parse_bypass(entry: str) -> _Bypass:
    host, port = _split_port(entry)
    host = host.strip("[]")
    try:
        network: _Network | None = ipaddress.ip_network(host, strict=False)
    except ValueError:
        network = None
    if network is not None:
        return _Bypass(None, network, port)
    return _Bypass(host.removeprefix("*").lstrip(".").rstrip("."), None, port)


def _split_port(entry: str) -> tuple[str, int | None]:
    """``host:port``, ``[v6]:port`` → (host, port); a bare IPv6 address keeps its colons."""
    if entry.startswith("["):
        host, _, rest = entry.partition("]")
        port = rest.removeprefix(":")
        return host + "]", int(port) if port.isdigit() else None
    host, sep, port = entry.rpartition(":")
    if sep and port.isdigit() and ":" not in host:
        return host, int(port)
    return entry, None
