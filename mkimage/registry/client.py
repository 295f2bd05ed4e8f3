"""The OCI distribution API over HTTP(S) (``transport``: http.client).

oras-py 0.2.43 was evaluated first and does not serve: its requests carry no timeout, a
retry decorator sleeps 2 + 3**n seconds on any error (a dead registry hangs for minutes),
blob downloads neither cap the size, check the digest nor resume with Range, monolithic
uploads read the whole blob into memory, manifests come back parsed (the exact bytes a
digest is over are lost), cross-repository mount and ``$REGISTRY_AUTH_FILE`` are absent,
and TLS takes either its CA bundle or the default one, not both.

Every request has a connect and a read timeout.  TLS is verified against the system CAs
plus ``--ca-cert``.  Credentials go in headers only; no header, URL query with a token,
or password is ever logged or put in a message.
"""

from __future__ import annotations

import functools
import http.client
import json
import logging
import re
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, Protocol
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from mkimage import __version__
from mkimage.errors import InputError, RegistryError, UsageError, VerifyError
from mkimage.registry.artifact import INDEX_MEDIA_TYPE, OCI_MANIFEST_MEDIA_TYPE, Descriptor
from mkimage.registry.auth import Challenge, Credentials, auth_files, find_credentials, parse_challenge
from mkimage.registry.proxy import proxies_from_env
from mkimage.registry.reference import RegistryRef, is_loopback
from mkimage.registry.streams import BufferPool
from mkimage.registry.transport import Body, Response, Transport, TransportError, TransportOptions

log = logging.getLogger("mkspawn")

# Docker's schema 2 is accepted only so that a container image is refused as "not a
# bundle" rather than as "unknown tag".
MANIFEST_ACCEPT = f"{OCI_MANIFEST_MEDIA_TYPE}, application/vnd.docker.distribution.manifest.v2+json"
OCTET_STREAM = "application/octet-stream"
DOWNLOAD_CHUNK = 1 << 20
_MAX_ERROR_BODY = 64 << 10


# (offset, length) → a fresh body over that part of the blob, so a failed chunk can be resent.
BlobSource = Callable[[int, int], Body]


@dataclass(frozen=True, slots=True)
class ClientOptions:
    insecure: bool = False  # plain HTTP, for loopback or an --insecure-registry host
    insecure_registries: frozenset[str] = frozenset()
    ca_cert: Path | None = None
    connect_timeout_s: float = 10.0
    timeout_s: float = 60.0  # between bytes, not for the whole transfer
    chunk_size: int = 64 << 20  # blobs above this go up in PATCH chunks of this size
    retries: int = 3  # resumptions per blob after a dropped connection
    env: Mapping[str, str] = field(default_factory=dict)


def check_transport(ref: RegistryRef, options: ClientOptions) -> None:
    """Plain HTTP only when asked for, and only to this machine or a host named for it."""
    if not options.insecure:
        return
    named = ref.host in options.insecure_registries or ref.hostname in options.insecure_registries
    if not is_loopback(ref.hostname) and not named:
        raise UsageError(f"{ref.host}: --insecure (plain HTTP) is allowed for loopback registries only; "
                         f"name the host with --insecure-registry {ref.host} to allow it", code="insecure-refused")


def _tls_context(ca_cert: Path | None) -> ssl.SSLContext:
    """The system CA store plus an optional extra CA file."""
    context = ssl.create_default_context()
    if ca_cert is not None:
        try:
            context.load_verify_locations(cafile=str(ca_cert))
        except (OSError, ssl.SSLError) as e:
            raise InputError(f"{ca_cert}: cannot load CA certificate: {e}", code="bad-ca-cert") from None
    return context


class RegistryClient:
    """One repository on one registry; authentication is negotiated on the first 401."""

    def __init__(self, ref: RegistryRef, options: ClientOptions, *, push: bool) -> None:
        check_transport(ref, options)
        self.ref = ref
        self.options = options
        self._base = f"{'http' if options.insecure else 'https'}://{ref.host}"
        # Proxies from the caller's environment as curl reads them; no ~/.netrc credentials.
        self._transport = Transport(TransportOptions(
            tls=_tls_context(options.ca_cert) if not options.insecure else ssl.create_default_context(),
            connect_timeout_s=options.connect_timeout_s, timeout_s=options.timeout_s,
            user_agent=f"mkspawn/{__version__}", proxies=proxies_from_env(options.env)))
        # Looked up on the first challenge: an anonymous registry never runs a credential helper.
        self._credentials: Credentials | None = None
        self._looked_up = False
        self._authorization: str | None = None
        # What a token is asked to cover when the registry's challenge does not say.
        self._own_scope = f"repository:{ref.repository}:{'pull,push' if push else 'pull'}"
        # Every scope a token was granted for so far, asked again with a new one so that
        # tokens do not alternate between repositories (e.g. a mount's source and target).
        self._asked: list[str] = []

    def close(self) -> None:
        self._transport.close()

    # ---- plumbing ------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return f"{self._base}/v2/{self.ref.repository}/{path}"

    def _send(self, method: str, url: str, *, headers: Mapping[str, str] | None = None,
              body: Callable[[], Body | bytes] | None = None, scopes: Sequence[str] = ()) -> Response:
        """One request, authenticated on a 401; the response is streamed, so close it.
        ``scopes``: what a token for this request needs beyond this repository's, used
        only if the registry's challenge names none."""
        for attempt in range(2):
            sent = dict(headers or {})
            if self._authorization is not None:
                sent["Authorization"] = self._authorization
            try:
                response = self._transport.request(method, url, headers=sent, body=body)
            except TransportError as e:
                _raise_unreachable(self.ref.host, e)
            if response.status == 401 and attempt == 0 and self._authenticate(response, scopes):
                response.close()
                continue
            return response
        return response

    def _authenticate(self, response: Response, scopes: Sequence[str]) -> bool:
        """Set the Authorization for this registry from its challenge; False if nothing new to try."""
        challenge = parse_challenge(response.headers.get("WWW-Authenticate", ""))
        if challenge is None or challenge.scheme not in ("basic", "bearer"):
            return False
        credentials = self._find_credentials()
        if challenge.scheme == "basic":
            if credentials is None:
                raise self._no_credentials()
            if credentials.identity_token:
                raise RegistryError(f"{self.ref.host}: the credentials from {credentials.source} are an identity "
                                    "token, which only a bearer token service takes; this registry asks for a "
                                    "password", code="registry-auth-failed")
            header = credentials.basic_header()
        else:
            header = f"Bearer {self._token(challenge, scopes)}"
        if header == self._authorization:
            return False
        self._authorization = header
        return True

    def _find_credentials(self) -> Credentials | None:
        if not self._looked_up:
            self._credentials = find_credentials(self.ref.host, self.options.env, self.options.timeout_s)
            self._looked_up = True
        return self._credentials

    def _no_credentials(self) -> RegistryError:
        files = " or ".join(str(p) for p in auth_files(self.options.env)) or "no credentials file"
        return RegistryError(f"{self.ref.host}: the registry requires credentials and there are none for "
                             f"{self.ref.host} in {files}", code="registry-auth-failed")

    def _denied(self, response: Response) -> RegistryError:
        who = (f"as {self._credentials.username!r} (from {self._credentials.source})"
               if self._credentials is not None else "anonymously")
        return RegistryError(f"{self.ref.host}: access denied {who}: HTTP {response.status}"
                             f"{_error_text(response)}", code="registry-auth-failed")

    def _token(self, challenge: Challenge, scopes: Sequence[str]) -> str:
        """A token from the challenge's realm and service, for the scopes the challenge
        names (distribution names each repository and action the request needs), or,
        if it names none, this repository's plus ``scopes``."""
        realm = challenge.params.get("realm", "")
        parts = urlsplit(realm)
        if parts.scheme not in ("https", "http") or not parts.netloc:
            raise RegistryError(f"{self.ref.host}: bearer challenge without a usable realm", code="registry-error")
        if parts.scheme == "http" and not self.options.insecure:
            raise RegistryError(f"{self.ref.host}: token realm {parts.netloc} is plain HTTP; refusing to send "
                                "credentials there without --insecure", code="registry-auth-failed")
        named = challenge.params.get("scope", "").split()
        wanted = _merged(self._asked, named or [self._own_scope, *scopes])
        credentials = self._credentials
        service = [("service", challenge.params["service"])] if "service" in challenge.params else []
        try:
            if credentials is not None and credentials.identity_token:
                # OAuth2 refresh-token grant (docker's token spec): POSTed, scopes space-separated.
                form = urlencode([("grant_type", "refresh_token"), ("refresh_token", credentials.password),
                                  ("client_id", "mkspawn"), ("scope", " ".join(wanted)), *service]).encode()
                response = self._transport.request(
                    "POST", realm, headers={"Content-Type": "application/x-www-form-urlencoded"},
                    body=lambda: form)
            else:
                url = _with_query(realm, *(("scope", scope) for scope in wanted), *service)  # one scope each
                headers = {"Authorization": credentials.basic_header()} if credentials else {}
                response = self._transport.request("GET", url, headers=headers)
        except TransportError as e:
            raise RegistryError(f"{self.ref.host}: token service {parts.netloc}: {e.reason}",
                                code="registry-unreachable") from None
        with response:
            if response.status in (401, 403):
                raise self._denied(response)
            if response.status != 200:
                raise RegistryError(f"{self.ref.host}: token service {parts.netloc}: HTTP {response.status}",
                                    code="registry-error")
            try:
                doc = json.loads(response.read(_MAX_ERROR_BODY))
            except (ValueError, OSError, http.client.HTTPException):
                doc = None
        token = (doc.get("token") or doc.get("access_token")) if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{self.ref.host}: token service {parts.netloc} returned no token",
                                code="registry-error")
        self._asked = wanted
        return token

    def _check(self, response: Response, what: str, *ok: int) -> None:
        if response.status in ok:
            return
        if response.status in (401, 403):
            raise self._denied(response)
        raise RegistryError(f"{self.ref.host}: {what}: HTTP {response.status}{_error_text(response)}",
                            code="registry-error")

    def _location(self, response: Response) -> str:
        location = response.headers.get("Location")
        if not location:
            raise RegistryError(f"{self.ref.host}: upload session without a Location", code="registry-error")
        return urljoin(self._base + "/", location)

    # ---- the API -------------------------------------------------------------------

    def probe(self) -> None:
        """``GET /v2/``: proves the registry speaks the API and settles authentication."""
        with self._send("GET", f"{self._base}/v2/") as response:
            self._check(response, "API version check", 200)

    def prepare(self) -> None:
        self.probe()

    def get_manifest(self, cap: int) -> bytes:
        """The manifest's exact bytes, refused once they exceed ``cap``."""
        what = f"manifest {self.ref.reference}"
        with self._send("GET", self._url(f"manifests/{self.ref.reference}"),
                        headers={"Accept": MANIFEST_ACCEPT}) as response:
            if response.status == 404:
                raise InputError(f"{self.ref}: no such manifest in {self.ref.host}/{self.ref.repository}"
                                 f"{_error_text(response)}", code="unknown-reference")
            self._check(response, what, 200)
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > cap:
                raise VerifyError(f"{self.ref}: manifest is {length} bytes, limit {cap}", code="blob-too-large")
            data = bytearray()
            for chunk in self._chunks(response, what):
                data += chunk
                if len(data) > cap:
                    raise VerifyError(f"{self.ref}: manifest exceeds {cap} bytes", code="blob-too-large")
            return bytes(data)

    def put_manifest(self, data: bytes, tag: str) -> str:
        return self._put_manifest(data, tag, OCI_MANIFEST_MEDIA_TYPE).get("Docker-Content-Digest", "")

    def _put_manifest(self, data: bytes, reference: str, media_type: str) -> http.client.HTTPMessage:
        with self._send("PUT", self._url(f"manifests/{reference}"), headers={"Content-Type": media_type},
                        body=lambda: data) as response:
            self._check(response, f"manifest upload to {reference}", 201)
            return response.headers

    def put_referrer(self, data: bytes, digest: str) -> bool:
        """Push a manifest with a ``subject`` by digest; True if the registry indexes it
        itself (distribution-spec v1.1: it answers with ``OCI-Subject``), so no fallback tag."""
        return "OCI-Subject" in self._put_manifest(data, digest, OCI_MANIFEST_MEDIA_TYPE)

    def get_index(self, tag: str, cap: int) -> bytes | None:
        """The image index under ``tag``, or None if the tag does not exist."""
        what = f"index {tag}"
        # Not the index type alone: distribution answers 404 for a manifest of a type the
        # client does not accept, and something else under the tag must be seen, not replaced.
        accept = f"{INDEX_MEDIA_TYPE}, {MANIFEST_ACCEPT}, application/vnd.docker.distribution.manifest.list.v2+json"
        with self._send("GET", self._url(f"manifests/{tag}"), headers={"Accept": accept}) as response:
            if response.status == 404:
                return None
            self._check(response, what, 200)
            data = bytearray()
            for chunk in self._chunks(response, what):
                data += chunk
                if len(data) > cap:
                    raise VerifyError(f"{self.ref.host}/{self.ref.repository}: {what} exceeds {cap} bytes",
                                      code="blob-too-large")
            return bytes(data)

    def put_index(self, data: bytes, tag: str) -> None:
        self._put_manifest(data, tag, INDEX_MEDIA_TYPE)

    def has_blob(self, desc: Descriptor) -> bool:
        with self._send("HEAD", self._url(f"blobs/{desc.digest}")) as response:
            if response.status == 404:
                return False
            self._check(response, f"blob check of {desc}", 200)
            return True

    def mount_blob(self, desc: Descriptor, repositories: Sequence[str]) -> str | None:
        """Cross-repository mount (``POST …/blobs/uploads/?mount=&from=``) from the first of
        ``repositories`` that holds the blob; the repository, or None if none could."""
        for repository in repositories:
            if repository == self.ref.repository:
                continue
            source_scope = [f"repository:{repository}:pull"]
            try:
                with self._send("HEAD", f"{self._base}/v2/{repository}/blobs/{desc.digest}",
                                scopes=source_scope) as response:
                    if response.status != 200:
                        continue  # not there, or not readable for us: no mount to try
            except RegistryError as e:
                if e.code != "registry-auth-failed":
                    raise
                # The token service will not let us read the source: upload instead.
                log.info("push: %s: no mount from %s: %s", desc, repository, e.message)
                continue
            url = _with_query(self._url("blobs/uploads/"), ("mount", desc.digest), ("from", repository))
            with self._send("POST", url, scopes=source_scope) as response:
                if response.status == 201:
                    return repository
                self._check(response, f"mount of {desc} from {repository}", 202)
                # Refused (no permission on the source): the registry opened an upload instead.
                self._cancel(self._location(response))
        return None

    def _cancel(self, location: str) -> None:
        with self._send("DELETE", location):
            pass  # best effort: the registry expires abandoned uploads anyway

    def put_blob(self, desc: Descriptor, source: BlobSource, progress: Callable[[int], None]) -> None:
        """Monolithic PUT up to ``chunk_size``; above it, PATCH chunks that resume after a drop."""
        with self._send("POST", self._url("blobs/uploads/")) as response:
            self._check(response, f"upload of {desc}", 202)
            location = self._location(response)
        chunk = self.options.chunk_size
        headers = {"Content-Type": OCTET_STREAM}
        offset = 0
        failures = 0
        while desc.size > chunk and offset < desc.size:
            length = min(chunk, desc.size - offset)
            start = offset
            try:
                response = self._send("PATCH", location, body=functools.partial(source, start, length),
                                      headers={**headers, "Content-Range": f"{start}-{start + length - 1}"})
            except RegistryError as e:
                failures += 1
                if e.code == "registry-tls" or failures > self.options.retries:
                    raise
                log.info("push: %s: %s; resuming the upload", desc.title, e.message)
                offset, location = self._upload_status(location, desc)
                continue
            with response:
                self._check(response, f"upload of {desc}", 202)
                location = self._location(response)
            offset += length
            progress(length)
        whole = desc.size <= chunk
        with self._send("PUT", _with_query(location, ("digest", desc.digest)), headers=headers,
                        body=(lambda: source(0, desc.size)) if whole else (lambda: b"")) as response:
            if response.status == 400 and "DIGEST_INVALID" in _error_text(response):
                raise VerifyError(f"{self.ref.host}: the registry computed another digest for {desc}",
                                  code="digest-mismatch")
            self._check(response, f"upload of {desc}", 201)
        if whole:
            progress(desc.size)

    def _upload_status(self, location: str, desc: Descriptor) -> tuple[int, str]:
        """How much of an interrupted upload the registry holds: ``Range: 0-<last>``."""
        with self._send("GET", location) as response:
            self._check(response, f"upload status of {desc}", 204)
            match = re.fullmatch(r"(?:bytes=)?0-(\d+)", response.headers.get("Range", ""))
            return (int(match.group(1)) + 1 if match else 0), self._location(response)

    def iter_blob(self, desc: Descriptor) -> Iterator[bytes]:
        """The blob's bytes as served (the caller checks size and digest); a dropped
        connection resumes with ``Range`` up to ``retries`` times."""
        pool = BufferPool(1, DOWNLOAD_CHUNK)
        for view in self.receive_blob(desc, pool):
            data = bytes(view)
            pool.give(view.obj)  # type: ignore[arg-type]  # a view of the pool's bytearray
            yield data

    def receive_blob(self, desc: Descriptor, pool: BufferPool) -> Iterator[memoryview]:
        """``iter_blob`` without copies: each chunk is a view of a buffer taken from ``pool``,
        filled straight from the socket; the consumer gives it back when done with it."""
        received = 0
        failures = 0
        while True:
            headers = {"Accept-Encoding": "identity"}
            if received:
                headers["Range"] = f"bytes={received}-"
            with self._send("GET", self._url(f"blobs/{desc.digest}"), headers=headers) as response:
                if response.status == 404:
                    raise VerifyError(f"{self.ref}: blob {desc} is in the manifest but not in the registry",
                                      code="blob-unknown")
                self._check(response, f"download of {desc}", 200, 206)
                skip = received if response.status == 200 else 0  # Range ignored: start over, drop the head
                body = response.raw
                try:
                    while True:
                        buffer = pool.take()
                        try:
                            n = _fill(body, buffer)
                        except BaseException:
                            pool.give(buffer)
                            raise
                        if n == 0:
                            pool.give(buffer)
                            left = getattr(body, "length", None)
                            if left:  # http.client returns 0, not IncompleteRead, when the peer hangs up early
                                raise http.client.IncompleteRead(b"", left)
                            return
                        start = min(skip, n)
                        skip -= start
                        if start == n:
                            pool.give(buffer)
                            continue
                        received += n - start
                        yield memoryview(buffer)[start:n]
                except _DROPPED as e:
                    failures += 1
                    if failures > self.options.retries:
                        raise RegistryError(f"{self.ref.host}: connection lost {failures} times fetching {desc} "
                                            f"({received} bytes in): {_reason(e)}",
                                            code="transfer-interrupted") from None
                    log.info("pull: %s: connection lost at byte %d (%s); resuming", desc.title, received, _reason(e))

    def _chunks(self, response: Response, what: str) -> Iterator[bytes]:
        try:
            while chunk := response.read(DOWNLOAD_CHUNK):
                yield chunk
        except _DROPPED as e:
            raise RegistryError(f"{self.ref.host}: {what}: connection lost: {_reason(e)}",
                                code="transfer-interrupted") from None


def _merged(first: Sequence[str], then: Sequence[str]) -> list[str]:
    """Scopes in order, each once."""
    return list(dict.fromkeys([*first, *then]))


# A body cut short (IncompleteRead), reset, or silent past the read timeout.
_DROPPED = (OSError, http.client.HTTPException)


class _Readable(Protocol):
    def readinto(self, buffer: memoryview) -> int: ...


def _fill(body: _Readable, buffer: bytearray) -> int:
    """Fill ``buffer`` from ``body``; fewer bytes only at the end of the body."""
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        n = body.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


def _with_query(url: str, *params: tuple[str, str]) -> str:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True) + list(params)
    return urlunsplit(parts._replace(query=urlencode(query)))


def _raise_unreachable(host: str, e: TransportError) -> NoReturn:
    if e.kind == "tls":
        raise RegistryError(f"{host}: TLS: {e.reason}", code="registry-tls",
                            hint="name the registry's CA with --ca-cert FILE") from None
    if e.kind == "timeout":
        raise RegistryError(f"{host}: timed out ({e.reason})", code="registry-timeout") from None
    raise RegistryError(f"{host}: cannot connect: {e.reason}", code="registry-unreachable") from None


def _reason(e: BaseException) -> str:
    """The cause of a dropped transfer, without addresses or object reprs."""
    if isinstance(e, http.client.IncompleteRead):
        return f"connection closed {e.expected} bytes short"
    if isinstance(e, TimeoutError):
        return "read timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return type(e).__name__


def _error_text(response: Response) -> str:
    """``: CODE: message`` from a distribution error body, if there is one."""
    try:
        raw = response.read(_MAX_ERROR_BODY)
        doc = json.loads(raw or b"null")
    except (ValueError, OSError, http.client.HTTPException):
        return ""
    errors = doc.get("errors") if isinstance(doc, dict) else None
    if not isinstance(errors, list):
        return ""
    texts = [f"{e.get('code', '?')}: {e.get('message', '')}".strip() for e in errors[:3] if isinstance(e, dict)]
    return (": " + "; ".join(texts))[:300] if texts else ""
