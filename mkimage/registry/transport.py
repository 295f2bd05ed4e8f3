"""HTTP/1.1 for the registry client on the standard library's ``http.client``.

``requests`` served before and cost a tenth of a second of every push and pull in
imports alone (measured: ``import requests`` 0.12 s against 0.04 s for ``http.client``
and ``ssl``), for features the distribution API does not use.  What it did for us is
here: keep-alive connections per origin (thread-safe, so an upload beside another has
its own), a connect timeout and a timeout between bytes, a fresh connection when a kept
one turns out closed, and redirects of GET and HEAD (registries send blob downloads to
a storage URL) without the Authorization header once the origin changes.

HTTP proxies from the environment (``proxy.py``): an https URL goes through a CONNECT
tunnel, TLS inside it verified against the registry's own name; a plain-HTTP URL is sent
to the proxy in absolute form.  Each URL, a redirect target too, is judged against
NO_PROXY on its own.  Proxy credentials go in Proxy-Authorization to the proxy only
(in the CONNECT, never inside the tunnel) and appear in messages as ``user:***``.
"""

from __future__ import annotations

import http.client
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urljoin, urlsplit, urlunsplit

from mkimage.registry.proxy import Proxy, ProxyConfig

log = logging.getLogger("mkspawn")

MAX_REDIRECTS = 5
SEND_BLOCK = 1 << 20  # request bodies go to the socket in 1 MiB blocks, not http.client's 8 KiB
_DRAIN_LIMIT = 64 << 10  # an unread body up to this size is read so its connection can be kept
_TUNNEL_REFUSED = "Tunnel connection failed: "  # how http.client's set_tunnel reports a non-200 CONNECT


class Body(Protocol):
    """A request body streamed by http.client: ``read`` in blocks, ``len`` for Content-Length."""

    def read(self, size: int = -1) -> bytes: ...

    def __len__(self) -> int: ...


class TransportError(Exception):
    """The request did not get a response: ``kind`` is "tls", "timeout" or "connect"."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind, self.reason = kind, reason


_Origin = tuple[str, str]  # scheme, host[:port]


class Response:
    """A response whose body is read by the caller (``read``/``readinto``); closing it
    hands its connection back for the next request when the body was read to its end."""

    def __init__(self, raw: http.client.HTTPResponse, connection: http.client.HTTPConnection,
                 release: Callable[[http.client.HTTPConnection], None]) -> None:
        self.raw, self._release = raw, release
        self._connection: http.client.HTTPConnection | None = connection
        self.status = raw.status
        self.headers = raw.headers

    def read(self, amt: int | None = None) -> bytes:
        return self.raw.read(amt)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        left = self.raw.length
        if not self.raw.isclosed() and left is not None and left <= _DRAIN_LIMIT:
            try:
                self.raw.read()
            except (OSError, http.client.HTTPException):
                pass  # the connection is closed below instead
        if self.raw.isclosed() and not self.raw.will_close:
            self._release(connection)
        else:
            self.raw.close()
            connection.close()

    def __enter__(self) -> Response:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class TransportOptions:
    tls: ssl.SSLContext
    connect_timeout_s: float
    timeout_s: float  # between bytes
    user_agent: str
    proxies: ProxyConfig = ProxyConfig()  # none unless the caller's environment names one


class Transport:
    def __init__(self, options: TransportOptions) -> None:
        self._options = options
        self._idle: dict[_Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._announced: set[_Origin] = set()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    def request(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
                body: Callable[[], Body | bytes | None] | None = None) -> Response:
        """Send and return the response (status and headers read, body not); ``body`` makes
        a fresh body each time the request has to be sent again."""
        sent = {"User-Agent": self._options.user_agent, **(headers or {})}
        for _ in range(MAX_REDIRECTS + 1):
            response = self._send(method, url, sent, body)
            location = response.headers.get("Location")
            if method not in ("GET", "HEAD") or response.status not in (301, 302, 303, 307, 308) or not location:
                return response
            response.close()
            target = urljoin(url, location)
            if _origin(target) != _origin(url):
                # Credentials are for the registry, not for the storage it redirects to.
                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
            url = target
        raise TransportError("connect", f"more than {MAX_REDIRECTS} redirects")

    def _send(self, method: str, url: str, headers: Mapping[str, str],
              body: Callable[[], Body | bytes | None] | None) -> Response:
        origin = _origin(url)
        parts = urlsplit(url)
        proxy = self._options.proxies.for_url(parts.scheme, parts.hostname or "", parts.port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        forwarded = proxy is not None and parts.scheme == "http"
        if forwarded:
            path = urlunsplit(parts._replace(path=parts.path or "/", fragment=""))  # absolute form, for the proxy
        while True:
            connection, reused = self._connection(origin, proxy)
            data = body() if body is not None else None
            sent = dict(headers)
            if forwarded and proxy is not None and proxy.authorization is not None:
                sent["Proxy-Authorization"] = proxy.authorization
            if data is not None and not isinstance(data, bytes):
                sent["Content-Length"] = str(len(data))
            try:
                connection.request(method, path, body=data, headers=sent)
                raw = connection.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                connection.close()
                if reused:
                    continue  # a kept connection the server had closed: once more on a new one
                raise TransportError("connect", _reason(e)) from None
            except ssl.SSLError as e:
                connection.close()
                raise _tls_failure(e) from None
            except TimeoutError:
                connection.close()
                raise TransportError("timeout", "read timed out") from None
            except (OSError, http.client.HTTPException) as e:
                connection.close()
                raise TransportError("connect", _reason(e)) from None
            if forwarded and raw.status == 407 and proxy is not None:
                # Only a proxy answers 407; the registry never saw the request.
                answer = f"{raw.status} {raw.reason}".strip()
                raw.close()
                connection.close()
                raise TransportError("connect", f"proxy {proxy.shown} refused the request: {answer}")
            return Response(raw, connection, lambda c: self._keep(origin, c))

    def _connection(self, origin: _Origin, proxy: Proxy | None) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            idle = self._idle.get(origin)
            if idle:
                return idle.pop(), True
        scheme, netloc = origin
        options = self._options
        # Through a proxy the socket goes to the proxy; an https origin is then tunnelled
        # (CONNECT) and TLS inside the tunnel checks the registry's name, not the proxy's.
        address = proxy.netloc if proxy is not None else netloc
        connection = (http.client.HTTPSConnection(address, timeout=options.connect_timeout_s, context=options.tls,
                                                  blocksize=SEND_BLOCK)
                      if scheme == "https" else
                      http.client.HTTPConnection(address, timeout=options.connect_timeout_s, blocksize=SEND_BLOCK))
        if proxy is not None:
            self._announce(origin, proxy)
            if scheme == "https":
                target = urlsplit(f"https://{netloc}")
                connection.set_tunnel(target.hostname or "", target.port or 443,
                                      headers={"Proxy-Authorization": proxy.authorization}
                                      if proxy.authorization is not None else None)
        try:
            connection.connect()
        except ssl.SSLError as e:
            connection.close()
            raise _tls_failure(e) from None
        except TimeoutError:
            connection.close()
            via = f" through proxy {proxy.shown}" if proxy is not None else ""
            raise TransportError("timeout", f"connect{via} timed out") from None
        except OSError as e:
            connection.close()
            if proxy is None:
                raise TransportError("connect", _reason(e)) from None
            if not e.errno and str(e).startswith(_TUNNEL_REFUSED):  # the proxy's answer to CONNECT, e.g. 407
                answer = str(e).removeprefix(_TUNNEL_REFUSED)
                raise TransportError("connect", f"proxy {proxy.shown} refused the tunnel: {answer}") from None
            raise TransportError("connect", f"proxy {proxy.shown}: {_reason(e)}") from None
        assert connection.sock is not None
        connection.sock.settimeout(options.timeout_s)  # from now on: between bytes
        connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return connection, False

    def _announce(self, origin: _Origin, proxy: Proxy) -> None:
        with self._lock:
            if origin in self._announced:
                return
            self._announced.add(origin)
        log.info("%s://%s through proxy %s", *origin, proxy.shown)

    def _keep(self, origin: _Origin, connection: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.setdefault(origin, []).append(connection)


def _origin(url: str) -> _Origin:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


def _tls_failure(e: ssl.SSLError) -> TransportError:
    # A failed certificate check says why in verify_message; other TLS errors in reason.
    detail = e.verify_message if isinstance(e, ssl.SSLCertVerificationError) else e.reason
    return TransportError("tls", detail or _reason(e))


def _reason(e: BaseException) -> str:
    """The OS-level cause, without addresses or object reprs."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    if isinstance(e, socket.gaierror) and e.args:
        return str(e.args[-1])
    return str(e) or type(e).__name__
