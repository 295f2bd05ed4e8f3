"""Kernel sources: downloads against a real local HTTP server, tarballs, trees, git."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from mkimage.errors import InputError, ToolError
from mkimage.kernel.fetch import fetch_url, mirror_path
from mkimage.kernel.source import materialise_source, source_identity, tree_fingerprint
from mkimage.recipe.model import KernelSource
from tests.conftest import needs_tool

PAYLOAD = os.urandom(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class Served:
    """What the test server holds and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    drop_once: set[str] = field(default_factory=set)  # paths whose first full GET is cut short
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)


class _Handler(BaseHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:
        self.served.requests.append((self.path, self.headers.get("Range")))
        data = self.served.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes="):-1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if start == 0 and self.path in self.served.drop_once:
            # Promise the whole file, deliver a third, hang up: a dropped connection.
            self.served.drop_once.discard(self.path)
            self.wfile.write(data[: len(data) // 3])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(data[start:])

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, Served]]:
    served = Served()
    handler = type("Handler", (_Handler,), {"served": served})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_download_resumes_after_a_dropped_connection(server: tuple[str, Served], tmp_path: Path) -> None:
    base, served = server
    served.files["/linux.tar.xz"] = PAYLOAD
    served.drop_once.add("/linux.tar.xz")
    got = fetch_url(f"{base}/linux.tar.xz", PAYLOAD_SHA, cache_root=tmp_path, backoff_s=0.01)
    assert got.read_bytes() == PAYLOAD
    assert got == tmp_path / "downloads" / PAYLOAD_SHA / "linux.tar.xz"
    ranges = [r for _, r in served.requests]
    assert ranges[0] is None
    assert ranges[1] == f"bytes={len(PAYLOAD) // 3}-", "the second attempt must resume, not restart"
    assert not list((tmp_path / "downloads" / "partial").iterdir())

    served.requests.clear()
    assert fetch_url(f"{base}/linux.tar.xz", PAYLOAD_SHA, cache_root=tmp_path) == got
    assert served.requests == [], "a cached digest needs no network"


def test_wrong_sha256_is_rejected_and_not_cached(server: tuple[str, Served], tmp_path: Path) -> None:
    base, served = server
    served.files["/linux.tar.xz"] = PAYLOAD
    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(InputError) as e:
        fetch_url(f"{base}/linux.tar.xz", wrong, cache_root=tmp_path, backoff_s=0.01)
    assert e.value.code == "checksum-mismatch"
    assert wrong in e.value.message and PAYLOAD_SHA in e.value.message
    assert not (tmp_path / "downloads" / wrong).exists()
    assert not list((tmp_path / "downloads" / "partial").iterdir()), "bad bytes must not be resumed later"


def test_404_is_one_clear_line(server: tuple[str, Served], tmp_path: Path) -> None:
    base, served = server
    with pytest.raises(ToolError) as e:
        fetch_url(f"{base}/missing.tar.xz", PAYLOAD_SHA, cache_root=tmp_path, backoff_s=0.01)
    assert e.value.message == f"download {base}/missing.tar.xz: HTTP 404 Not Found"
    assert len(served.requests) == 1, "a 404 is not retried"


def test_size_limit_stops_the_download(server: tuple[str, Served], tmp_path: Path) -> None:
    base, served = server
    served.files["/big"] = PAYLOAD
    with pytest.raises(ToolError) as e:
        fetch_url(f"{base}/big", PAYLOAD_SHA, cache_root=tmp_path, max_bytes=1000)
    assert e.value.code == "download-too-large"


def test_mirror_is_used_offline(server: tuple[str, Served], tmp_path: Path) -> None:
    base, served = server
    mirror = tmp_path / "mirror"
    (mirror / "v6.x").mkdir(parents=True)
    (mirror / "v6.x" / "linux.tar.xz").write_bytes(PAYLOAD)
    mirrors = {f"{base}/pub/": mirror}
    assert mirror_path(f"{base}/pub/v6.x/linux.tar.xz", mirrors) == mirror / "v6.x" / "linux.tar.xz"
    got = fetch_url(f"{base}/pub/v6.x/linux.tar.xz", PAYLOAD_SHA, cache_root=tmp_path / "cache", mirrors=mirrors)
    assert got.read_bytes() == PAYLOAD
    assert served.requests == []


def test_mirror_copy_is_verified(server: tuple[str, Served], tmp_path: Path) -> None:
    base, _ = server
    (tmp_path / "linux.tar.xz").write_bytes(b"tampered")
    with pytest.raises(InputError, match="sha256 mismatch"):
        fetch_url(f"{base}/pub/linux.tar.xz", PAYLOAD_SHA, cache_root=tmp_path / "cache",
                  mirrors={f"{base}/pub/": tmp_path})


# ---- tarballs, trees and git -------------------------------------------------------------

def _fake_kernel_tarball(top: str = "linux-9.9") -> bytes:
    """Just enough of a kernel tree for the source stage: a Makefile and a Kconfig."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in {"Makefile": b"VERSION = 9\n", "Kconfig": b"config X\n\tbool\n"}.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(text)
            tar.addfile(info, io.BytesIO(text))
    return buf.getvalue()


def test_url_source_is_downloaded_and_extracted_once(server: tuple[str, Served], tmp_path: Path) -> None:
    base, served = server
    data = _fake_kernel_tarball()
    served.files["/linux-9.9.tar.gz"] = data
    src = KernelSource(url=f"{base}/linux-9.9.tar.gz", sha256=hashlib.sha256(data).hexdigest())
    identity = source_identity(src, cache_root=tmp_path)
    assert served.requests == [], "identifying a URL source needs no download"
    tree = materialise_source(src, identity, cache_root=tmp_path, mirrors={}).tree
    assert (tree / "Makefile").read_text() == "VERSION = 9\n"
    assert tree == tmp_path / "kernel" / "src" / identity.digest / "tree"
    again = materialise_source(src, identity, cache_root=tmp_path, mirrors={}).tree
    assert again == tree and len(served.requests) == 1


def test_multi_block_xz_tarball_unpacks_whole(tmp_path: Path) -> None:
    """Extraction runs xz with -T0 (EXTRACT_ENV), as Debian's many-block linux-source
    tarball allows; the tree must come out byte for byte, in every block."""
    needs_tool("xz")
    blob = os.urandom(3 << 20)
    plain = tmp_path / "linux.tar"
    plain.write_bytes(_fake_kernel_tarball_plain(blob))
    subprocess.run(["xz", "-T2", "--block-size=256KiB", "-0", str(plain)], check=True)
    blocks = subprocess.run(["xz", "--robot", "-l", str(plain) + ".xz"], check=True, capture_output=True,
                            text=True).stdout
    assert int(next(line.split()[2] for line in blocks.splitlines() if line.startswith("file"))) > 1
    src = KernelSource(tarball=tmp_path / "linux.tar.xz")
    tree = materialise_source(src, source_identity(src, cache_root=tmp_path), cache_root=tmp_path, mirrors={}).tree
    assert (tree / "blob").read_bytes() == blob
    assert (tree / "Makefile").read_text() == "VERSION = 9\n"


def _fake_kernel_tarball_plain(blob: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in {"Makefile": b"VERSION = 9\n", "Kconfig": b"config X\n\tbool\n", "blob": blob}.items():
            info = tarfile.TarInfo(f"linux-9.9/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tarball_sha256_is_checked(tmp_path: Path) -> None:
    tarball = tmp_path / "linux.tar.gz"
    tarball.write_bytes(_fake_kernel_tarball())
    with pytest.raises(InputError, match="sha256 mismatch"):
        source_identity(KernelSource(tarball=tarball, sha256="0" * 64), cache_root=tmp_path)


def test_tarball_without_a_kernel_is_refused(tmp_path: Path) -> None:
    tarball = tmp_path / "junk.tar"
    with tarfile.open(tarball, "w") as tar:
        info = tarfile.TarInfo("README")
        tar.addfile(info, io.BytesIO(b""))
    src = KernelSource(tarball=tarball)
    with pytest.raises(InputError, match="no kernel tree inside"):
        materialise_source(src, source_identity(src, cache_root=tmp_path), cache_root=tmp_path, mirrors={})


def test_dir_source_is_used_in_place_and_fingerprinted(tmp_path: Path) -> None:
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Makefile").write_text("VERSION = 9\n")
    (tree / "Kconfig").write_text("")
    src = KernelSource(dir=tree)
    first = source_identity(src, cache_root=tmp_path)
    assert materialise_source(src, first, cache_root=tmp_path, mirrors={}).tree == tree
    assert source_identity(src, cache_root=tmp_path) == first
    (tree / "Makefile").write_text("VERSION = 10\n")
    assert tree_fingerprint(tree) != first.digest


def test_git_source_pins_a_commit(tmp_path: Path) -> None:
    needs_tool("git")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "Makefile").write_text("VERSION = 9\n")
    (repo / "Kconfig").write_text("")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "v9"], check=True)
    subprocess.run([*git, "tag", "v9"], check=True)
    commit = subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()

    src = KernelSource(git=str(repo), rev="v9")
    identity = source_identity(src, cache_root=tmp_path / "cache")
    assert identity.digest == f"git:{commit}"
    got = materialise_source(src, identity, cache_root=tmp_path / "cache", mirrors={})
    assert (got.tree / "Makefile").read_text() == "VERSION = 9\n"
    assert len(got.sha256) == 64
