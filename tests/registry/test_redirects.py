"""Blob downloads that the registry redirects to its storage, as registries backed by S3,
GCS or a CDN do: Debian's docker-registry with its ``redirect`` storage middleware answers
blob GETs and HEADs with 307 to ``baseurl`` + the blob's storage path, and a plain file
server over the registry's own storage directory serves them there (the storage's part)."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.conftest import run_mkspawn as mkspawn
from tests.registry.conftest import PASSWORD, USER, Registry, docker_config, running_registry, write_htpasswd


@dataclass
class Storage:
    """What the storage server was asked for: path and the Authorization header, if any."""

    requests: list[tuple[str, str, str | None]] = field(default_factory=list)


@dataclass(frozen=True)
class RedirectingRegistry:
    registry: Registry
    storage: Storage


@pytest.fixture(scope="module")
def redirecting_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedirectingRegistry]:
    directory = tmp_path_factory.mktemp("redirecting-registry")
    root = directory / "storage"
    root.mkdir()
    storage = Storage()

    class Handler(SimpleHTTPRequestHandler):
        def send_head(self) -> io.BytesIO | BinaryIO | None:
            storage.requests.append((self.command, self.path, self.headers.get("Authorization")))
            return super().send_head()

        def log_message(self, format: str, *args: object) -> None:
            pass  # the test reads storage.requests

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    baseurl = f"http://127.0.0.1:{server.server_address[1]}/"
    htpasswd = write_htpasswd(directory / "htpasswd", USER, PASSWORD)
    try:
        with running_registry(directory, tls=True, htpasswd=htpasswd,
                              middleware={"storage": [{"name": "redirect", "options": {"baseurl": baseurl}}]}
                              ) as registry:
            yield RedirectingRegistry(registry, storage)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_pull_follows_the_redirect_without_the_registry_credentials(
        tmp_path: Path, redirecting_registry: RedirectingRegistry, bundles: dict[str, Path], trust: Path) -> None:
    registry, storage = redirecting_registry.registry, redirecting_registry.storage
    assert registry.ca_cert is not None
    home = tmp_path / "home"
    docker_config(home / ".docker", registry.host, USER, PASSWORD)
    env = {"HOME": str(home)}
    ref = f"{registry.host}/redirected/demo:1"
    done = mkspawn("push", bundles["demo"], ref, "--ca-cert", registry.ca_cert, env=env)
    assert done.returncode == 0, (done.stderr, registry.log.read_text()[-2000:])
    storage.requests.clear()
    out = tmp_path / "pulled.mkb"
    done = mkspawn("pull", ref, "-o", out, "--trust", trust, "--ca-cert", registry.ca_cert, env=env)
    assert done.returncode == 0, (done.stderr, registry.log.read_text()[-2000:])
    assert out.read_bytes() == bundles["demo"].read_bytes()
    # Every blob came from the storage, and the registry's Basic credentials stayed behind.
    fetched = [path for method, path, _ in storage.requests if method == "GET"]
    assert len(fetched) >= 3 and all(p.startswith("/docker/registry/v2/blobs/sha256/") for p in fetched)
    assert [auth for _, _, auth in storage.requests if auth is not None] == []
