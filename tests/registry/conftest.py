"""Real registries for the push/pull tests: Debian's docker-registry (distribution 2.8)
on 127.0.0.1 at a free port, one over TLS from a test CA with htpasswd (bcrypt) auth,
one over plain HTTP without auth; and small signed bundles that share a kernel."""

from __future__ import annotations

import base64
import contextlib
import datetime
import gzip
import ipaddress
import json
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mkimage.pipeline import build_bundle
from mkimage.recipe.load import load_recipe
from mkimage.signing.keys import PassphraseSource, load_private_key
from tests.conftest import SYNTH_RELEASE, missing, prebuilt_recipe

REPO = Path(__file__).resolve().parents[2]
KEYS = REPO / "tests" / "data" / "keys"
EPOCH = 1_700_000_000
USER = "ci-bot"
PASSWORD = "s3cret-Pa55word-not-in-logs"
READY_TIMEOUT_S = 30


@dataclass(frozen=True)
class Registry:
    host: str  # 127.0.0.1:PORT
    root: Path  # storage root: docker/registry/v2/...
    ca_cert: Path | None
    log: Path

    def blob_data(self, digest: str) -> Path:
        hex_digest = digest.split(":", 1)[1]
        return self.root / "docker" / "registry" / "v2" / "blobs" / "sha256" / hex_digest[:2] / hex_digest / "data"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tls_files(directory: Path) -> tuple[Path, Path, Path]:
    """The CA, server certificate and key ``write_ca`` wrote into ``directory``."""
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def write_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A test CA and a server certificate for 127.0.0.1 / localhost signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mkspawn test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_path, cert_path, key_path = tls_files(directory)
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_path, cert_path, key_path


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, verify: str | bool) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"docker-registry exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            requests.get(url, timeout=2, verify=verify)
            return
        except requests.exceptions.ConnectionError:
            time.sleep(0.1)  # polling a port that is not open yet; there is no console marker to wait for
    pytest.fail(f"docker-registry did not answer {url} within {READY_TIMEOUT_S}s: {log.read_text()[-2000:]}")


@contextlib.contextmanager
def running_registry(directory: Path, *, tls: bool, htpasswd: Path | None = None,
                     auth: Mapping[str, object] | None = None,
                     middleware: Mapping[str, object] | None = None) -> Iterator[Registry]:
    """docker-registry with our own config file (Debian's packaged service is not used).
    ``auth`` is the config's ``auth`` section, ``middleware`` its ``middleware`` section;
    with ``tls``, a CA already written into ``directory`` by ``write_ca`` (say for a token
    service beside it) is used."""
    binary = shutil.which("docker-registry")
    if binary is None:
        missing("docker-registry is not installed (Debian package docker-registry)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    root = directory / "storage"
    config: dict[str, object] = {
        "version": 0.1,
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(root)}, "delete": {"enabled": True}},
        "http": {"addr": f"127.0.0.1:{port}"},
    }
    ca = None
    if tls:
        ca, cert, key = write_ca(directory) if not (directory / "ca.pem").exists() else tls_files(directory)
        config["http"] = {"addr": f"127.0.0.1:{port}", "tls": {"certificate": str(cert), "key": str(key)}}
    if htpasswd is not None:
        config["auth"] = {"htpasswd": {"realm": "mkspawn-test", "path": str(htpasswd)}}
    if auth is not None:
        config["auth"] = dict(auth)
    if middleware is not None:
        config["middleware"] = dict(middleware)
    config_path = directory / "config.yml"
    config_path.write_text(json.dumps(config))  # YAML is a superset of JSON
    log = directory / "registry.log"
    with log.open("wb") as log_file:
        proc = subprocess.Popen([binary, "serve", str(config_path)], stdin=subprocess.DEVNULL, stdout=log_file,
                                stderr=subprocess.STDOUT)
    try:
        scheme = "https" if tls else "http"
        _wait_ready(f"{scheme}://127.0.0.1:{port}/v2/", proc, log, str(ca) if ca else False)
        yield Registry(f"127.0.0.1:{port}", root, ca, log)
    finally:
        stop(proc)


def write_htpasswd(path: Path, user: str, password: str) -> Path:
    tool = shutil.which("htpasswd")
    if tool is None:
        missing("htpasswd is not installed (Debian package apache2-utils)")
    # -i: the password on stdin, never in argv; -B: bcrypt, the only hash distribution accepts.
    subprocess.run([tool, "-B", "-i", "-c", str(path), user], input=password.encode(), check=True,
                   capture_output=True, timeout=60)
    return path


@pytest.fixture(scope="session")
def plain_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("plain-registry"), tls=False) as registry:
        yield registry


@pytest.fixture(scope="session")
def tls_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    directory = tmp_path_factory.mktemp("tls-registry")
    htpasswd = write_htpasswd(directory / "htpasswd", USER, PASSWORD)
    with running_registry(directory, tls=True, htpasswd=htpasswd) as registry:
        yield registry


def docker_config(directory: Path, host: str, user: str, password: str) -> Path:
    """A docker-style credentials file holding ``user:password`` for ``host``."""
    directory.mkdir(parents=True, exist_ok=True)
    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    path = directory / "config.json"
    path.write_text(json.dumps({"auths": {host: {"auth": auth}}}))
    return path


# --- bundles ---------------------------------------------------------------------------


def make_bundle(directory: Path, kernel: Path, *, cmdline: str = "console=ttyS0 panic=-1", version: str = "1.0.0",
                key: str = "test-ed25519.pem", name: str = "demo") -> Path:
    """A bundle built by the real builder from a prebuilt kernel, signed by a test key."""
    recipe = prebuilt_recipe(directory, kernel, name=name, version=version, cmdline=cmdline, epoch=EPOCH)
    signer = load_private_key(KEYS / key, PassphraseSource(None, "UNSET"), {})
    out = directory / f"{name}-{version}.mkb"
    build_bundle(load_recipe(recipe), out, [signer])
    return out


@pytest.fixture(scope="session")
def big_kernel(tmp_path_factory: pytest.TempPathFactory, make_bzimage: Callable[..., bytes]) -> Path:
    """A 3 MiB bzImage (incompressible payload), so "no kernel bytes uploaded" means something
    and uploads take more than one chunk when the chunk size is 1 MiB."""
    text = b"Linux version " + SYNTH_RELEASE.encode() + b" " + random.Random(11).randbytes(3 << 20)
    payload = gzip.compress(text, compresslevel=1, mtime=0)
    path = tmp_path_factory.mktemp("kernel") / "bzImage"
    path.write_bytes(make_bzimage(payload))
    return path


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory, big_kernel: Path) -> dict[str, Path]:
    """Signed bundles: two sharing the kernel, an older version, one by an untrusted key."""
    base = tmp_path_factory.mktemp("bundles")
    return {
        "demo": make_bundle(base / "demo", big_kernel),
        "sibling": make_bundle(base / "sibling", big_kernel, cmdline="console=ttyS0 panic=-1 quiet"),
        "old": make_bundle(base / "old", big_kernel, version="0.9.0"),
        "untrusted": make_bundle(base / "untrusted", big_kernel, key="other-ed25519.pem"),
    }


@pytest.fixture
def trust(tmp_path: Path) -> Path:
    """A fresh trust store holding the test key only: the "other machine"."""
    d = tmp_path / "trust"
    d.mkdir()
    shutil.copy(KEYS / "test-ed25519.pub.pem", d)
    return d


# --- an HTTP proxy ----------------------------------------------------------------------

PROXY_USER = "proxy-user"
PROXY_PASSWORD = "Pr0xy-pass-not-in-logs"


@dataclass(frozen=True)
class HttpProxy:
    """Debian's tinyproxy on 127.0.0.1: CONNECT only to ``connect_ports``, Basic auth if asked."""

    port: int
    log: Path
    auth: bool

    def url(self, password: str = PROXY_PASSWORD) -> str:
        return f"http://{PROXY_USER}:{password}@127.0.0.1:{self.port}" if self.auth else f"http://127.0.0.1:{self.port}"

    def offset(self) -> int:
        """Where its log ends now: ``requests(since=…)`` then shows one test's traffic only."""
        return self.log.stat().st_size if self.log.exists() else 0

    def requests(self, since: int = 0) -> list[str]:
        """The request lines it received ("CONNECT 127.0.0.1:5000 HTTP/1.0", "GET http://…")."""
        marker = "Request (file descriptor "
        with self.log.open("rb") as f:
            f.seek(since)
            lines = f.read().decode(errors="replace").splitlines()
        return [line.split("): ", 1)[1] for line in lines if marker in line and "): " in line]


@contextlib.contextmanager
def running_proxy(directory: Path, connect_ports: list[int], *, auth: bool = False) -> Iterator[HttpProxy]:
    """tinyproxy with our own config file in the foreground (the packaged service is not used)."""
    binary = shutil.which("tinyproxy")
    if binary is None:
        missing("tinyproxy is not installed (Debian package tinyproxy)")
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = directory / "tinyproxy.log"
    lines = [f"Port {port}", "Listen 127.0.0.1", "Timeout 60", f'LogFile "{log}"', "LogLevel Connect",
             "MaxClients 50", "Allow 127.0.0.1", "DisableViaHeader Yes",
             # CONNECT is refused (403) to any port not listed, as tinyproxy's packaged config does for all but 443.
             *(f"ConnectPort {p}" for p in connect_ports)]
    if auth:
        lines.append(f"BasicAuth {PROXY_USER} {PROXY_PASSWORD}")
    config = directory / "tinyproxy.conf"
    config.write_text("\n".join(lines) + "\n")
    with (directory / "tinyproxy.out").open("wb") as out:
        proc = subprocess.Popen([binary, "-d", "-c", str(config)], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"tinyproxy exited with {proc.returncode}: {log.read_text()[-2000:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                pytest.fail(f"tinyproxy did not listen on {port} within {READY_TIMEOUT_S}s")
            time.sleep(0.05)  # polling a port that is not open yet; there is no console marker to wait for
        yield HttpProxy(port, log, auth)
    finally:
        stop(proc)


def registry_port(registry: Registry) -> int:
    return int(registry.host.rsplit(":", 1)[1])


@pytest.fixture(scope="session")
def http_proxy(tmp_path_factory: pytest.TempPathFactory, tls_registry: Registry) -> Iterator[HttpProxy]:
    with running_proxy(tmp_path_factory.mktemp("proxy"), [registry_port(tls_registry)]) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def auth_proxy(tmp_path_factory: pytest.TempPathFactory, tls_registry: Registry) -> Iterator[HttpProxy]:
    with running_proxy(tmp_path_factory.mktemp("auth-proxy"), [registry_port(tls_registry)], auth=True) as proxy:
        yield proxy


def stop(proc: subprocess.Popen[bytes]) -> None:
    """End a server the fixture started: politely, then for sure."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
