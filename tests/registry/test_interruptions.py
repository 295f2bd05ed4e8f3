"""Connections that drop mid-blob, and pulls interrupted by signals: resume or fail cleanly,
and never leave the output (or a temp file beside it) behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.conftest import default_cache_root
from tests.conftest import run_mkspawn as mkspawn
from tests.registry.conftest import Registry
from tests.registry.test_push_pull import one_error_line, push
from tests.registry.test_refusals import assert_nothing_written


class CuttingProxy:
    """A TCP relay to the registry that closes ``cuts`` connections once each has sent
    ``after`` response bytes, and can slow every response down to ``delay_s`` per 64 KiB."""

    def __init__(self, upstream: str, *, after: int, cuts: int, delay_s: float = 0.0,
                 upload_delay_s: float = 0.0) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.after, self.cuts_left, self.delay_s, self.upload_delay_s = after, cuts, delay_s, upload_delay_s
        self.cut = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.host = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        # The client may hang up first (an interrupted pull): that ends the relay, not the test.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError), client, \
                socket.create_connection(self.upstream) as upstream:
            threading.Thread(target=self._pump, args=(client, upstream, self.upload_delay_s), daemon=True).start()
            sent = 0
            while data := upstream.recv(65536):
                sent += len(data)
                with self.lock:
                    cut = sent > self.after and self.cuts_left > 0
                    if cut:
                        self.cuts_left -= 1
                        self.cut += 1
                if cut:
                    client.sendall(data[: len(data) - (sent - self.after)])
                    client.shutdown(socket.SHUT_RDWR)
                    return
                client.sendall(data)
                if self.delay_s:
                    time.sleep(self.delay_s)  # throttling the relay is the point here

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, delay_s: float) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
                if delay_s:
                    time.sleep(delay_s)  # throttling uploads through the relay is the point
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()


@contextlib.contextmanager
def proxy(registry: Registry, **kwargs: float) -> Iterator[CuttingProxy]:
    relay = CuttingProxy(registry.host, **kwargs)  # type: ignore[arg-type]
    try:
        yield relay
    finally:
        relay.close()


def test_a_dropped_blob_download_resumes_with_range(tmp_path: Path, plain_registry: Registry,
                                                    bundles: dict[str, Path], trust: Path) -> None:
    push(bundles["demo"], f"{plain_registry.host}/drop/demo:1", "--insecure")
    with proxy(plain_registry, after=1 << 20, cuts=1) as relay:
        out = tmp_path / "pulled.mkb"
        done = mkspawn("-v", "pull", f"{relay.host}/drop/demo:1", "-o", out, "--trust", trust, "--insecure")
        assert done.returncode == 0, done.stderr
        assert relay.cut == 1
    assert "resuming" in done.stderr
    assert out.read_bytes() == bundles["demo"].read_bytes()


def test_a_connection_that_keeps_dropping_fails_cleanly(tmp_path: Path, plain_registry: Registry,
                                                        bundles: dict[str, Path], trust: Path) -> None:
    push(bundles["demo"], f"{plain_registry.host}/drop/demo:1", "--insecure")
    # A resumed download keeps what each connection delivered, so the cuts come early
    # enough that the retries run out before the 3 MiB kernel is complete.
    with proxy(plain_registry, after=256 << 10, cuts=100) as relay:
        out = tmp_path / "pulled.mkb"
        done = mkspawn("pull", f"{relay.host}/drop/demo:1", "-o", out, "--trust", trust, "--insecure")
    line = one_error_line(done, 1)
    assert relay.host in line and line.endswith("[transfer-interrupted]")
    assert_nothing_written(out)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_pull_leaves_nothing(tmp_path: Path, plain_registry: Registry, bundles: dict[str, Path],
                                             trust: Path, signum: int, status: int) -> None:
    push(bundles["demo"], f"{plain_registry.host}/signal/demo:1", "--insecure")
    out = tmp_path / "pulled.mkb"
    with proxy(plain_registry, after=1 << 40, cuts=0, delay_s=0.05) as relay:
        env = {"PATH": os.environ["PATH"], "HOME": str(Path.home()),
               "XDG_CACHE_HOME": str(default_cache_root().parent), "XDG_CONFIG_HOME": str(tmp_path / "config")}
        proc = subprocess.Popen([sys.executable, "-m", "mkimage", "-v", "pull", f"{relay.host}/signal/demo:1",
                                 "-o", str(out), "--trust", str(trust), "--insecure"],
                                stderr=subprocess.PIPE, text=True, env=env)
        assert proc.stderr is not None
        for line in proc.stderr:  # the kernel is being fetched into the bundle's temp file
            if "pull: bzImage" in line:
                break
        assert any(p.name.startswith(f".{out.name}.") for p in tmp_path.iterdir())
        proc.send_signal(signum)
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == status, rest
    assert "Traceback" not in rest
    assert_nothing_written(out)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)],
                         ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_push_ends_it_at_once(tmp_path: Path, plain_registry: Registry, bundles: dict[str, Path],
                                              signum: int, status: int) -> None:
    """The kernel goes up on its own thread beside the small blobs: a signal still ends the
    push then and there (not when that upload is done), and no manifest is written."""
    with proxy(plain_registry, after=1 << 40, cuts=0, upload_delay_s=0.2) as relay:  # ~10 s for the kernel
        proc = subprocess.Popen([sys.executable, "-m", "mkimage", "-v", "push", str(bundles["demo"]),
                                 f"{relay.host}/signal/push:1", "--insecure"], stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        for line in proc.stderr:
            if "push: bzImage" in line and "uploading" in line:
                break
        time.sleep(0.5)  # into the throttled upload; nothing to wait for but the clock
        proc.send_signal(signum)
        sent = time.monotonic()
        rest = proc.stderr.read()
        assert proc.wait(timeout=60) == status, rest
        assert time.monotonic() - sent < 3, rest
    assert "Traceback" not in rest
    manifest = requests.head(f"http://{plain_registry.host}/v2/signal/push/manifests/1", timeout=30)
    assert manifest.status_code == 404
