"""The bearer-token flow against a real registry: Debian's docker-registry with
``auth: token`` trusts tokens signed by a key whose certificate is its rootcertbundle, and
a small token service here (HTTPS, basic credentials in, a JWT out) issues them, as a
registry's separate auth server (Docker Hub's, Harbor's, GitLab's) does."""

from __future__ import annotations

import base64
import datetime
import json
import secrets
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from tests.conftest import run_mkspawn as mkspawn
from tests.registry.conftest import PASSWORD, USER, Registry, docker_config, running_registry, write_ca
from tests.registry.test_credential_helpers import setup, write_helper
from tests.registry.test_push_pull import one_error_line

SERVICE = "mkspawn-test-registry"
ISSUER = "mkspawn-test-token-service"
TOKEN_LIFETIME_S = 300
IDENTITY_TOKEN = "identity-token-from-a-browser-login-not-in-logs"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class TokenService:
    """Signs ES256 JWTs with ``key``; the self-signed ``cert`` travels in the header's
    ``x5c`` and is the registry's rootcertbundle, which is how distribution 2.8 finds the
    key that signed a token (the other way is a libtrust key id in ``kid``)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    requests: list[dict[str, object]] = field(default_factory=list)
    # None: the one user it knows gets whatever is asked.  Otherwise the actions allowed
    # per repository: others are left out of the token (as Docker Hub's service does) or,
    # with ``strict``, the request is refused (as some registries' services do).
    grants: dict[str, set[str]] | None = None
    strict: bool = False

    def allowed(self, scopes: list[str]) -> list[dict[str, object]] | None:
        """The token's access claim for ``scopes``; None if ``strict`` refuses them."""
        access: list[dict[str, object]] = []
        for scope in scopes:
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            if kind != "repository" or not name:
                continue
            asked = set(actions.split(",")) - {""}
            granted = asked if self.grants is None else asked & self.grants.get(name, set())
            if granted != asked and self.strict:
                return None
            if granted:
                access.append({"type": kind, "name": name, "actions": sorted(granted)})
        return access

    def token(self, subject: str, scopes: list[str]) -> str:
        now = int(time.time())
        access = self.allowed(scopes) or []
        header = {"typ": "JWT", "alg": "ES256",
                  "x5c": [base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode("ascii")]}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + TOKEN_LIFETIME_S, "nbf": now - 5,
                  "iat": now, "jti": secrets.token_hex(16), "access": access}
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        # JWS ES256 is the raw r || s, 32 bytes each, not the DER that cryptography returns.
        r, s = decode_dss_signature(self.key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _signing_identity(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate, Path]:
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, ISSUER)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    bundle = directory / "token-root.pem"
    bundle.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, bundle


def _handler(service: TokenService) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            url = urlsplit(self.path)
            query = parse_qs(url.query)
            expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            authorized = self.headers.get("Authorization") == expected
            service.requests.append({"path": url.path, "service": query.get("service", []),
                                     "scope": query.get("scope", []), "authorized": authorized})
            self._grant(url.path, query, authorized, "token")

        def do_POST(self) -> None:
            """The OAuth2 refresh-token grant docker's token spec adds: a form, scopes
            space-separated, an identity token in place of a password."""
            length = int(self.headers.get("Content-Length", "0"))
            form = parse_qs(self.rfile.read(length).decode())
            authorized = (form.get("grant_type") == ["refresh_token"]
                          and form.get("refresh_token") == [IDENTITY_TOKEN])
            scopes = form.get("scope", [""])[0].split()
            service.requests.append({"path": self.path, "service": form.get("service", []), "scope": scopes,
                                     "authorized": authorized, "grant": form.get("grant_type", [])})
            self._grant(self.path, {**form, "scope": scopes}, authorized, "access_token")

        def _grant(self, path: str, query: dict[str, list[str]], authorized: bool, key: str) -> None:
            if path != "/token" or query.get("service") != [SERVICE]:
                self._reply(400, {"errors": [{"code": "UNSUPPORTED", "message": "unknown service"}]})
            elif not authorized or service.allowed(query.get("scope", [])) is None:
                self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials or scope"}]})
            else:
                token = service.token(USER, query.get("scope", []))
                self._reply(200, {key: token, "expires_in": TOKEN_LIFETIME_S})

        def _reply(self, status: int, doc: dict[str, object]) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the test asserts on service.requests instead

    return Handler


@dataclass(frozen=True)
class TokenRegistry:
    registry: Registry
    service: TokenService


@pytest.fixture(scope="module")
def token_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TokenRegistry]:
    directory = tmp_path_factory.mktemp("token-registry")
    ca, cert, key = write_ca(directory)  # one test CA for the registry and the token service
    signing_key, signing_cert, root_bundle = _signing_identity(directory)
    service = TokenService(signing_key, signing_cert)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(service))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    realm = f"https://127.0.0.1:{server.server_address[1]}/token"
    auth = {"token": {"realm": realm, "service": SERVICE, "issuer": ISSUER, "rootcertbundle": str(root_bundle)}}
    try:
        with running_registry(directory, tls=True, auth=auth) as registry:
            assert registry.ca_cert == ca
            yield TokenRegistry(registry, service)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_push_pull_through_a_token_service(tmp_path: Path, token_registry: TokenRegistry,
                                           bundles: dict[str, Path], trust: Path) -> None:
    registry, service = token_registry.registry, token_registry.service
    assert registry.ca_cert is not None
    home = tmp_path / "home"
    docker_config(home / ".docker", registry.host, USER, PASSWORD)
    ref = f"{registry.host}/token/demo:1"
    done = mkspawn("-v", "--debug", "push", bundles["demo"], ref, "--ca-cert", registry.ca_cert,
                   env={"HOME": str(home)})
    assert done.returncode == 0, (done.stderr, registry.log.read_text()[-3000:])
    assert PASSWORD not in done.stdout + done.stderr
    # The registry sent us to the token service, which saw our credentials and the push scope.
    granted = [r for r in service.requests if r["authorized"]]
    assert granted and all(r["service"] == [SERVICE] for r in granted)
    assert "repository:token/demo:pull,push" in granted[0]["scope"]  # type: ignore[operator]

    out = tmp_path / "pulled.mkb"
    done = mkspawn("-v", "--debug", "pull", ref, "-o", out, "--trust", trust, "--ca-cert", registry.ca_cert,
                   env={"HOME": str(home)})
    assert done.returncode == 0, (done.stderr, registry.log.read_text()[-3000:])
    assert PASSWORD not in done.stdout + done.stderr
    # Neither the token: a bearer header in a debug log is as good as the password for its lifetime.
    assert "Bearer ey" not in done.stderr
    assert out.read_bytes() == bundles["demo"].read_bytes()
    assert "repository:token/demo:pull" in service.requests[-1]["scope"]  # type: ignore[operator]


def test_wrong_password_at_the_token_service_names_the_registry(tmp_path: Path, token_registry: TokenRegistry,
                                                                bundles: dict[str, Path], trust: Path) -> None:
    registry = token_registry.registry
    assert registry.ca_cert is not None
    home = tmp_path / "home"
    docker_config(home / ".docker", registry.host, USER, "not-the-password")
    out = tmp_path / "x.mkb"
    ref = f"{registry.host}/token/demo:1"
    line = one_error_line(mkspawn("pull", ref, "-o", out, "--trust", trust, "--ca-cert", registry.ca_cert,
                                  env={"HOME": str(home)}), 1)
    assert line.startswith(f"mkspawn: error: {registry.host}: access denied as '{USER}'")
    assert line.endswith("[registry-auth-failed]") and "not-the-password" not in line
    assert not out.exists()
    # --debug adds the traceback of the refusal: still no password in any of it.
    done = mkspawn("-v", "--debug", "pull", ref, "-o", out, "--trust", trust, "--ca-cert", registry.ca_cert,
                   env={"HOME": str(home)})
    assert done.returncode == 1 and "not-the-password" not in done.stdout + done.stderr
    assert done.stderr.splitlines()[-1] == line
    line = one_error_line(mkspawn("push", bundles["demo"], f"{registry.host}/token/demo:2", "--ca-cert",
                                  registry.ca_cert, env={"HOME": str(home)}), 1)
    assert line.startswith(f"mkspawn: error: {registry.host}: access denied") and "not-the-password" not in line
    assert not [r for r in token_registry.service.requests[-2:] if r["authorized"]]


def test_the_registry_checks_the_token_signature(token_registry: TokenRegistry) -> None:
    """What makes the round trip above mean something: the registry sends clients to the
    token service, takes this service's tokens and refuses one signed by any other key."""
    registry, service = token_registry.registry, token_registry.service
    url = f"https://{registry.host}/v2/token/demo/tags/list"
    verify = str(registry.ca_cert)
    anonymous = requests.get(url, verify=verify, timeout=30)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith('Bearer realm="https://127.0.0.1:')
    scopes = ["repository:token/demo:pull"]
    good = requests.get(url, headers={"Authorization": f"Bearer {service.token(USER, scopes)}"}, verify=verify,
                        timeout=30)
    assert good.status_code in (200, 404), good.text  # 404: no tags yet when run alone
    other_key, _, _ = _signing_identity(Path(registry.log).parent / "other")
    forged = TokenService(other_key, service.cert).token(USER, scopes)  # the trusted cert, another key
    refused = requests.get(url, headers={"Authorization": f"Bearer {forged}"}, verify=verify, timeout=30)
    assert refused.status_code == 401


@pytest.fixture
def service(token_registry: TokenRegistry) -> Iterator[TokenService]:
    """The token service with its request log cleared and its policy restored afterwards."""
    token_registry.service.requests.clear()
    yield token_registry.service
    token_registry.service.grants, token_registry.service.strict = None, False


def asked(service: TokenService) -> list[list[str]]:
    """The scopes of each granted token request, in order."""
    return [list(r["scope"]) for r in service.requests if r["authorized"]]  # type: ignore[call-overload]


def test_token_scopes_are_the_ones_the_registry_names(tmp_path: Path, token_registry: TokenRegistry,
                                                      service: TokenService, bundles: dict[str, Path]) -> None:
    """Our own scope is asked for only where the challenge names none (``GET /v2/``); the
    mount's challenge names the target and the source, and both go to the token service,
    one ``scope`` parameter each, beside what was granted before."""
    registry = token_registry.registry
    assert registry.ca_cert is not None
    home = tmp_path / "home"
    docker_config(home / ".docker", registry.host, USER, PASSWORD)
    env = {"HOME": str(home)}
    source = push_json(bundles["demo"], f"{registry.host}/token/staging:1", registry, env)
    service.requests.clear()
    pushed = push_json(bundles["demo"], f"{registry.host}/token/release:1", registry, env, "--from", "token/staging")
    assert {b["status"] for b in pushed["blobs"]} == {"mounted"}, pushed  # type: ignore[index, union-attr]
    assert source["digest"] == pushed["digest"]
    scopes = asked(service)
    assert scopes[0] == ["repository:token/release:pull,push"]  # from GET /v2/: no scope in that challenge
    assert ["repository:token/release:pull,push", "repository:token/staging:pull"] in scopes


def test_a_mount_source_the_token_service_refuses_is_uploaded_instead(
        tmp_path: Path, token_registry: TokenRegistry, service: TokenService, bundles: dict[str, Path]) -> None:
    """A service that refuses a request naming a repository the user may not read (rather
    than leaving it out of the token) costs the mount, not the push."""
    registry = token_registry.registry
    assert registry.ca_cert is not None
    home = tmp_path / "home"
    docker_config(home / ".docker", registry.host, USER, PASSWORD)
    env = {"HOME": str(home)}
    push_json(bundles["demo"], f"{registry.host}/token/secret:1", registry, env)
    service.grants, service.strict = {"token/mine": {"pull", "push"}}, True
    pushed = push_json(bundles["demo"], f"{registry.host}/token/mine:1", registry, env, "--from", "token/secret")
    assert {b["status"] for b in pushed["blobs"]} == {"uploaded"}, pushed  # type: ignore[index, union-attr]
    refused = [r for r in service.requests if "repository:token/secret:pull" in r["scope"]]  # type: ignore[operator]
    assert refused, service.requests


def test_an_identity_token_from_a_helper_is_exchanged_at_the_token_service(
        tmp_path: Path, token_registry: TokenRegistry, service: TokenService, bundles: dict[str, Path],
        trust: Path) -> None:
    registry = token_registry.registry
    assert registry.ca_cert is not None
    write_helper(tmp_path / "bin", "sso", {"hosts": {registry.host: {"Username": "<token>",
                                                                        "Secret": IDENTITY_TOKEN}}})
    env = setup(tmp_path, {"credHelpers": {registry.host: "sso"}})
    ref = f"{registry.host}/token/sso:1"
    done = mkspawn("-v", "--debug", "push", bundles["demo"], ref, "--ca-cert", registry.ca_cert, env=env)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "pulled.mkb"
    pulled = mkspawn("-v", "--debug", "pull", ref, "-o", out, "--trust", trust, "--ca-cert", registry.ca_cert,
                     env=env)
    assert pulled.returncode == 0, pulled.stderr
    assert out.read_bytes() == bundles["demo"].read_bytes()
    assert service.requests and all(r["grant"] == ["refresh_token"] for r in service.requests), service.requests
    for run in (done, pulled):
        assert IDENTITY_TOKEN not in run.stdout + run.stderr


def push_json(bundle: Path, ref: str, registry: Registry, env: dict[str, str], *args: object) -> dict[str, object]:
    assert registry.ca_cert is not None
    done = mkspawn("push", bundle, ref, "--ca-cert", registry.ca_cert, "--json", *args, env=env)
    assert done.returncode == 0, (done.stderr, registry.log.read_text()[-2000:])
    return json.loads(done.stdout)  # type: ignore[no-any-return]
