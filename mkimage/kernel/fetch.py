"""Fetching a source tarball over HTTP(S): resumable, bounded, verified, cached by digest.

Nothing downloaded is used before its sha256 matches the recipe.  A partial file is
kept between attempts (and between runs) and resumed with a Range request; a
mismatching download is deleted, so a bad mirror cannot poison the cache.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from mkimage import progress
from mkimage.digests import file_sha256
from mkimage.errors import InputError, ToolError
from mkimage.kernel.cache import KernelCache, locked
from mkimage.store import mark_used

if TYPE_CHECKING:
    import requests

log = logging.getLogger("mkspawn")

DEFAULT_MAX_BYTES = 4 << 30  # far above any kernel tarball; stops a runaway response
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF_S = 1.0
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 60.0
PROGRESS_STEP_PERCENT = 5
PROGRESS_STEP_BYTES = 32 << 20  # when the server gives no length
_CHUNK = 1 << 16


def _transient() -> tuple[type[BaseException], ...]:
    """Failures worth another attempt: the network, not the request.  (requests is
    imported only when something is downloaded: every verb's start-up would pay for it.)"""
    import requests
    import urllib3.exceptions

    return (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,
        urllib3.exceptions.HTTPError,  # raw.stream raises urllib3's own errors
    )


class _Retry(Exception):
    """An attempt failed in a way that another attempt may fix."""


def mirror_path(url: str, mirrors: Mapping[str, Path]) -> Path | None:
    """The local file a mirror maps ``url`` to (longest matching prefix), if any."""
    for prefix in sorted(mirrors, key=len, reverse=True):
        if url.startswith(prefix):
            return mirrors[prefix] / unquote(url[len(prefix):])
    return None


def fetch_url(
    url: str,
    sha256: str,
    *,
    cache_root: Path,
    mirrors: Mapping[str, Path] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
) -> Path:
    """Return a local file whose content has ``sha256``, downloading ``url`` if needed.

    Order: the digest-keyed cache, then a mirror directory, then the network.
    """
    cache = KernelCache(cache_root)
    name = _file_name(url)
    final = cache.downloads_dir / sha256 / name
    if final.is_file():
        mark_used(final.parent)
        return final
    local = mirror_path(url, mirrors or {})
    if local is not None:
        if local.is_file():
            _verify(local, sha256, url=str(local))
            log.info("kernel: using mirror copy %s", local)
            return local
        log.info("kernel: %s is not in the mirror (%s); downloading", url, local)
    with locked(cache.lock_path(f"download-{sha256}"), url):
        if final.is_file():
            return final
        part = cache.downloads_dir / "partial" / f"{sha256}.part"
        part.parent.mkdir(parents=True, exist_ok=True)
        _download(url, part, max_bytes=max_bytes, retries=retries, backoff_s=backoff_s)
        try:
            _verify(part, sha256, url=url)
        except InputError:
            part.unlink(missing_ok=True)  # never resume onto bytes known to be wrong
            raise
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, final)
    return final


def _file_name(url: str) -> str:
    name = Path(unquote(urlsplit(url).path)).name
    return name if name not in ("", ".", "..") else "download"


def _verify(path: Path, expected: str, *, url: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise InputError(
            f"kernel source {url}: sha256 mismatch: expected {expected}, got {actual}",
            code="checksum-mismatch",
        )


def _download(url: str, part: Path, *, max_bytes: int, retries: int, backoff_s: float) -> None:
    import requests

    with requests.Session() as session, progress.task(f"kernel: download {_file_name(url)}", unit="bytes") as task:
        for attempt in range(retries + 1):
            try:
                _attempt(session, url, part, max_bytes=max_bytes, task=task)
                return
            except _Retry as e:
                if attempt == retries:
                    raise ToolError(
                        f"download {url}: giving up after {retries + 1} attempts: {e}", code="download-failed"
                    ) from e
                delay = backoff_s * (2**attempt)
                have = part.stat().st_size if part.exists() else 0
                log.info("kernel: download interrupted (%s); retrying in %.1fs from byte %d", e, delay, have)
                time.sleep(delay)


def _attempt(session: requests.Session, url: str, part: Path, *, max_bytes: int, task: progress.Task) -> None:
    import requests

    have = part.stat().st_size if part.exists() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with session.get(
            url, headers=headers, stream=True, verify=True, timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
        ) as resp:
            if resp.status_code == 416 and have:
                # Our partial file is already complete (or longer than the resource):
                # let the checksum decide.
                return
            if resp.status_code >= 500:
                raise _Retry(f"HTTP {resp.status_code} {resp.reason}")
            if resp.status_code not in (200, 206):
                raise ToolError(f"download {url}: HTTP {resp.status_code} {resp.reason}", code="download-failed")
            if resp.status_code == 206 and _range_start(resp) != have:
                # Not the range we asked for: start over rather than splice at the wrong offset.
                part.unlink(missing_ok=True)
                raise _Retry(f"server sent range {resp.headers.get('Content-Range')!r}, asked for {have}-")
            start = have if resp.status_code == 206 else 0
            length = resp.headers.get("Content-Length")
            total = start + int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise ToolError(
                    f"download {url}: {total} bytes is over the limit of {max_bytes}", code="download-too-large"
                )
            _write_body(resp, part, start=start, total=total, max_bytes=max_bytes, url=url, task=task)
            if total is not None and part.stat().st_size < total:
                raise _Retry(f"connection closed at byte {part.stat().st_size} of {total}")
    except requests.exceptions.SSLError as e:
        # A certificate problem does not go away by asking again.
        raise ToolError(f"download {url}: TLS verification failed: {e}", code="download-failed") from e
    except _transient() as e:
        raise _Retry(type(e).__name__) from e


def _range_start(resp: requests.Response) -> int | None:
    """The first byte of a 206 response, from ``Content-Range: bytes a-b/n``."""
    value = resp.headers.get("Content-Range", "")
    unit, _, rest = value.partition(" ")
    first = rest.split("-", 1)[0]
    return int(first) if unit == "bytes" and first.isdigit() else None


def _write_body(
    resp: requests.Response, part: Path, *, start: int, total: int | None, max_bytes: int, url: str,
    task: progress.Task,
) -> None:
    done = start
    task.update(completed=done, total=total)
    next_report = _next_mark(done, total)
    with open(part, "r+b" if part.exists() else "wb") as f:
        f.seek(start)
        f.truncate()
        # raw.stream with decode_content=False: the bytes on disk are the bytes the
        # digest covers, even if a server adds Content-Encoding.
        for chunk in resp.raw.stream(_CHUNK, decode_content=False):
            done += len(chunk)
            if done > max_bytes:
                raise ToolError(f"download {url}: more than {max_bytes} bytes", code="download-too-large")
            f.write(chunk)
            task.update(completed=done)
            if done >= next_report:
                _report(url, done, total)
                next_report = _next_mark(done, total)


def _next_mark(done: int, total: int | None) -> int:
    if total:
        step = max(1, total * PROGRESS_STEP_PERCENT // 100)
        return (done // step + 1) * step
    return (done // PROGRESS_STEP_BYTES + 1) * PROGRESS_STEP_BYTES


def _report(url: str, done: int, total: int | None) -> None:
    mib = done / (1 << 20)
    if total:
        log.info("kernel: downloading %s: %d%% (%.1f of %.1f MiB)", _file_name(url), done * 100 // total, mib,
                 total / (1 << 20))
    else:
        log.info("kernel: downloading %s: %.1f MiB", _file_name(url), mib)


__all__ = ["fetch_url", "mirror_path"]
