"""Real build-farm servers for tests: Debian's redis-server and distccd on 127.0.0.1,
each on a free port, owned by the test and killed after it."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from tests.conftest import missing

START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_port() -> int:
    """A port nothing listens on (bound a moment ago, then closed)."""
    return free_port()


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None and shutil.which(tool, path="/usr/sbin:/sbin") is None:
            missing(f"{tool} is not installed (setup.sh installs redis-server and distcc)")


class Redis:
    """A client speaking the Redis protocol itself, so tests can read and overwrite values
    byte for byte."""

    def __init__(self, port: int) -> None:
        self.port = port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def command(self, *words: bytes | str, password: str | None = None) -> object:
        """One command on a connection of its own (authenticated first with ``password``)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock, sock.makefile("rb") as f:
            for command in ([("AUTH", password)] if password else []) + [words]:
                parts = [w.encode() if isinstance(w, str) else w for w in command]
                sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
                reply = _reply(f)
            return reply

    def keys(self) -> list[bytes]:
        found = self.command("KEYS", "*")
        assert isinstance(found, list)
        return [k for k in found if isinstance(k, bytes)]


def _reply(f: BinaryIO) -> object:
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"$":
        size = int(rest)
        return None if size < 0 else f.read(size + 2)[:-2]
    if kind == b"*":
        return [_reply(f) for _ in range(int(rest))]
    if kind == b":":
        return int(rest)
    if kind == b"-":
        raise AssertionError(f"redis error: {rest!r}")
    return rest


@contextlib.contextmanager
def redis_server(work: Path) -> Iterator[Redis]:
    need("redis-server")
    port = free_port()
    log = work / f"redis-{port}.log"
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
            "--dir", str(work), "--logfile", str(log)]
    with _serving(argv) as proc:
        redis = Redis(port)
        _wait(lambda: redis.command("PING") == b"PONG", proc, log)
        yield redis


@dataclass(frozen=True, slots=True)
class Distccd:
    port: int
    stats_port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}/2"

    def stats(self) -> dict[str, str]:
        """distccd's own counters (its --stats HTTP page)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.stats_port}/", timeout=10) as page:
            text = page.read().decode()
        return {k: v for k, _, v in (line.partition(" ") for line in text.splitlines()) if v}

    def compiled(self) -> int:
        return int(self.stats()["dcc_compile_ok"])


@contextlib.contextmanager
def distccd(work: Path) -> Iterator[Distccd]:
    need("distccd", "distcc")
    port, stats_port = free_port(), free_port()
    log = work / f"distccd-{port}.log"
    # --no-detach keeps the daemon our child, so the fixture's kill ends it; two jobs, as on this machine.
    argv = ["distccd", "--daemon", "--no-detach", "--allow", "127.0.0.1", "--listen", "127.0.0.1",
            "--port", str(port), "--stats", "--stats-port", str(stats_port), "--jobs", "2",
            "--log-stderr", "--log-level", "warning"]
    with _serving(argv, stderr=log) as proc:
        server = Distccd(port, stats_port)
        _wait(lambda: "dcc_compile_ok" in server.stats(), proc, log)
        yield server


@contextlib.contextmanager
def _serving(argv: list[str], stderr: Path | None = None) -> Iterator[subprocess.Popen[bytes]]:
    with contextlib.ExitStack() as stack:
        err = stack.enter_context(open(stderr, "wb")) if stderr else subprocess.DEVNULL
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
        try:
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait(ready: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode}: {_tail(log)}")
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{proc.args!r} did not come up within {START_TIMEOUT_S:g}s: {_tail(log)}")


def _tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-800:]
    except OSError:
        return "(no log)"
