"""Push a bundle to a registry or layout, and pull one back: only verified bytes land.

A push uploads what the store lacks (a blob it already holds is skipped, so a bundle
sharing a kernel with an earlier one uploads no kernel bytes; one another repository of
the registry holds is mounted), then the manifest, then the SBOM and provenance as
referrers of it.  A pull is ``verify_bundle`` (the
same check as ``mkspawn verify``) over a bundle assembled from the registry: signatures,
trust and rollback from the small blobs first, then each component streamed into a temp
file beside the output and hashed once on the way; only then is it renamed into place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import threading
import typing
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from mkimage import progress
from mkimage.bundle.container import (
    MAX_PROVENANCE_BYTES,
    MAX_SIGNATURE_BYTES,
    BundleContents,
    BundleHead,
    ComponentMismatch,
    ComponentSource,
    HeadCheck,
    read_layout,
    write_bundle,
)
from mkimage.bundle.verify import BundleReport, Origin, opened_bundle, refuse_rollback, verify_bundle
from mkimage.errors import FormatError, MkspawnError, RegistryError, VerifyError
from mkimage.outputs import atomic_path
from mkimage.registry.artifact import (
    EMPTY_BLOB,
    EMPTY_CONFIG,
    MAX_OCI_MANIFEST_BYTES,
    SIGNATURE_MEDIA_TYPE,
    Artifact,
    Descriptor,
    Referrer,
    artifact_for,
    fallback_tag,
    merged_referrers_index,
    parse_artifact,
    plan_bundle,
    referrers_for,
    sha256_digest,
)
from mkimage.registry.client import BlobSource, ClientOptions, RegistryClient
from mkimage.registry.layout import LayoutStore
from mkimage.registry.reference import DEFAULT_TAG, LayoutRef, Ref
from mkimage.registry.streams import BUFFER_SIZE, BufferPool, SequentialWriter, WriteBehind, received_ahead
from mkimage.signing.trust import TrustStore

log = logging.getLogger("mkspawn")

PROGRESS_MIN_BYTES = 8 << 20  # smaller blobs move too fast for progress lines to help
PARALLEL_MIN_BYTES = 1 << 20  # a blob worth a second connection beside the others


class Store(Protocol):
    def prepare(self) -> None: ...

    def probe(self) -> None: ...

    def has_blob(self, desc: Descriptor) -> bool: ...

    def put_blob(self, desc: Descriptor, source: BlobSource, progress: Callable[[int], None]) -> None: ...

    def mount_blob(self, desc: Descriptor, repositories: Sequence[str]) -> str | None: ...

    def put_manifest(self, data: bytes, tag: str) -> str: ...

    def get_manifest(self, cap: int) -> bytes: ...

    def put_referrer(self, data: bytes, digest: str) -> bool: ...

    def get_index(self, tag: str, cap: int) -> bytes | None: ...

    def put_index(self, data: bytes, tag: str) -> None: ...

    def iter_blob(self, desc: Descriptor) -> Iterator[bytes]: ...

    def receive_blob(self, desc: Descriptor, pool: BufferPool) -> Iterator[memoryview]: ...


@contextlib.contextmanager
def open_store(ref: Ref, options: ClientOptions, *, push: bool) -> Iterator[Store]:
    if isinstance(ref, LayoutRef):
        yield LayoutStore(ref)
        return
    client = RegistryClient(ref, options, push=push)
    try:
        yield client
    finally:
        client.close()


@dataclass(frozen=True, slots=True)
class BlobReport:
    desc: Descriptor
    status: str  # "uploaded" / "skipped" / "mounted" on push, "fetched" on pull
    source: str | None = None  # the repository a mounted blob came from

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"digest": self.desc.digest, "size": self.desc.size,
                                "mediaType": self.desc.media_type, "title": self.desc.title, "status": self.status}
        if self.source is not None:
            d["from"] = self.source
        return d


@dataclass(frozen=True, slots=True)
class PushResult:
    reference: str
    digest: str
    blobs: tuple[BlobReport, ...]
    referrers: tuple[Referrer, ...] = ()
    referrers_tag: str | None = None  # the fallback index's tag, None if the store indexes referrers itself

    @property
    def uploaded_bytes(self) -> int:
        return sum(b.desc.size for b in self.blobs if b.status == "uploaded")

    def to_dict(self) -> dict[str, object]:
        return {"reference": self.reference, "digest": self.digest, "uploaded_bytes": self.uploaded_bytes,
                "skipped_bytes": sum(b.desc.size for b in self.blobs if b.status == "skipped"),
                "blobs": [b.to_dict() for b in self.blobs],
                "referrers": [{"artifactType": r.artifact_type, "digest": r.digest, "blob": r.blob.digest}
                              for r in self.referrers],
                "referrers_tag": self.referrers_tag}


@dataclass(frozen=True, slots=True)
class PullResult:
    reference: str
    digest: str
    path: Path
    report: BundleReport
    blobs: tuple[BlobReport, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        return {"ok": True, "reference": self.reference, "digest": self.digest,
                "blobs": [b.to_dict() for b in self.blobs], **self.report.to_dict()}


class Progress:
    """A progress task per large transfer, and log lines at each quarter (shown with ``-v``)."""

    def __init__(self, verb: str, desc: Descriptor) -> None:
        self._verb, self._desc, self._done, self._next_quarter = verb, desc, 0, 1
        self._task: progress.Task | None = None

    def __call__(self, n: int) -> None:
        self._done += n
        size = self._desc.size
        if size < PROGRESS_MIN_BYTES:
            return
        if self._task is None:
            self._task = progress.start(f"{self._verb}: {self._desc.title}", total=size, unit="bytes")
        self._task.update(completed=self._done)
        if self._done >= size:
            self._task.end()
        while self._next_quarter <= 4 and self._done * 4 >= size * self._next_quarter:
            log.info("%s: %s %d%% (%d of %d MiB)", self._verb, self._desc.title, 25 * self._next_quarter,
                     self._done >> 20, size >> 20)
            self._next_quarter += 1

    def failed(self) -> None:
        """The transfer stopped short: its bar ends as failed rather than hanging on."""
        if self._task is not None:
            self._task.end(ok=False)


class FileRange:
    """Part of an open file as a request body: ``read`` in blocks (positional reads, so
    two uploads can share the file), ``len`` for Content-Length.  ``stop`` set makes the
    next read fail, which ends an upload nobody waits for any more."""

    def __init__(self, f: BinaryIO, start: int, length: int, stop: threading.Event | None = None) -> None:
        self._f, self._pos, self._left, self._stop = f, start, length, stop

    def __len__(self) -> int:
        return self._left

    def read(self, size: int = -1) -> bytes:
        if self._stop is not None and self._stop.is_set():
            raise RegistryError(f"{getattr(self._f, 'name', 'bundle')}: upload abandoned", code="registry-error")
        want = self._left if size < 0 else min(size, self._left)
        if not want:
            return b""
        data = os.pread(self._f.fileno(), want, self._pos)
        if not data:
            raise VerifyError(f"{getattr(self._f, 'name', 'bundle')}: ends early while uploading", code="truncated")
        self._pos += len(data)
        self._left -= len(data)
        return data


class BytesRange:
    """Part of bytes in memory as a request body."""

    def __init__(self, data: bytes, start: int, length: int) -> None:
        self._view, self._pos, self._end = memoryview(data), start, start + length

    def __len__(self) -> int:
        return self._end - self._pos

    def read(self, size: int = -1) -> bytes:
        end = self._end if size < 0 else min(self._end, self._pos + size)
        data = bytes(self._view[self._pos:end])
        self._pos = end
        return data


def _bytes_source(data: bytes) -> BlobSource:
    def source(start: int, length: int) -> BytesRange:
        return BytesRange(data, start, length)

    return source


class _Background:
    """One call on a daemon thread; ``result`` waits for it (interruptibly) and returns
    its value or raises its exception.  A daemon, so that Ctrl-C or an error elsewhere
    does not wait for a long upload to finish."""

    def __init__(self, call: Callable[[], BlobReport]) -> None:
        self._call = call
        self._value: BlobReport | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mkspawn-upload", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as e:  # raised again by result(), in the caller's thread
            self._error = e

    def result(self) -> BlobReport:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


def push_bundle(bundle: Path, ref: Ref, store: Store, *, mount_from: Sequence[str] = ()) -> PushResult:
    """Upload the blobs the store lacks, then the manifest under the reference's tag.

    The bundle's structure is read, its components are not hashed first: each one's
    digest is the manifest's, and the registry refuses a blob whose bytes do not match it
    (a layout store hashes what it copies), so a damaged bundle fails the push with
    ``digest-mismatch`` before its manifest is written.  A blob the store already holds is
    skipped; one that a repository in ``mount_from`` holds is mounted, not uploaded.
    """
    tag = ref.tag or DEFAULT_TAG
    stop = threading.Event()  # set, it fails the reads of an upload no longer waited for
    with opened_bundle(bundle, read=read_layout) as (f, contents):
        artifact = artifact_for(contents)
        sources: list[tuple[Descriptor, BlobSource]] = [(artifact.config, _bytes_source(contents.manifest_bytes))]
        signed = len(contents.signatures)
        sources += [(layer, _bytes_source(raw))
                    for layer, (raw, _) in zip(artifact.layers[:signed], contents.signatures, strict=True)]
        if contents.provenance is not None:
            sources.append((artifact.layers[signed], _bytes_source(contents.provenance)))
            signed += 1
        offsets: dict[int, int] = {}  # source index -> offset in the bundle, for the components
        for component, layer in zip(contents.manifest.components, artifact.layers[signed:], strict=True):
            offsets[len(sources)], _ = contents.component_offsets[component.path]
            sources.append((layer, functools.partial(_file_source, f, offsets[len(sources)], stop)))
        store.prepare()
        # The largest blob goes up on a second connection while the others (the config,
        # signatures, small components: a few requests each) go up on this one.
        largest = max(range(len(sources)), key=lambda i: sources[i][0].size)
        background = None
        if len(sources) > 1 and sources[largest][0].size >= PARALLEL_MIN_BYTES and largest in offsets:
            background = _Background(functools.partial(_push_own_file, store, bundle, sources[largest][0],
                                                       offsets[largest], stop, mount_from))
        try:
            reports = [_push_blob(store, bundle, desc, source, mount_from)
                       for i, (desc, source) in enumerate(sources) if background is None or i != largest]
            if background is not None:
                reports.insert(largest, background.result())
        finally:
            stop.set()
        recorded = store.put_manifest(artifact.manifest_bytes, tag)
        if recorded and recorded != artifact.digest:
            raise RegistryError(f"{ref}: the registry recorded manifest digest {recorded}, expected {artifact.digest}",
                                code="registry-error")
        log.info("push: %s: manifest %s", ref, artifact.digest)
        referrers = referrers_for(contents, artifact)
    fallback = attach_referrers(store, artifact, referrers, str(ref))
    return PushResult(str(ref), artifact.digest, tuple(reports), referrers, fallback)


def attach_referrers(store: Store, subject: Artifact, referrers: Sequence[Referrer], where: str) -> str | None:
    """Push each referrer by digest and, unless the store indexes them by ``subject`` itself,
    merge them into the tag-schema fallback index; returns that index's tag (or None).

    Their member blobs are layers of the subject, already in the store; only the empty
    config may be missing.  Pushing again adds nothing to the index.
    """
    if not referrers:
        return None
    if not store.has_blob(EMPTY_CONFIG):
        store.put_blob(EMPTY_CONFIG, _bytes_source(EMPTY_BLOB), lambda n: None)
    indexed = [store.put_referrer(r.manifest_bytes, r.digest) for r in referrers]
    for r in referrers:
        log.info("push: %s: %s referrer %s", where, r.artifact_type, r.digest)
    if all(indexed):
        return None
    tag = fallback_tag(subject.digest)
    merged = merged_referrers_index(store.get_index(tag, MAX_OCI_MANIFEST_BYTES), referrers, f"{where} ({tag})")
    if merged is not None:
        store.put_index(merged, tag)
        log.info("push: %s: referrers listed in the index tagged %s", where, tag)
    return tag


def _push_blob(store: Store, bundle: Path, desc: Descriptor, source: BlobSource,
               mount_from: Sequence[str]) -> BlobReport:
    """Skip, mount or upload one blob."""
    if store.has_blob(desc):
        log.info("push: %s: already there, skipped", desc)
        return BlobReport(desc, "skipped")
    mounted = store.mount_blob(desc, mount_from) if mount_from else None
    if mounted is not None:
        log.info("push: %s: mounted from %s", desc, mounted)
        return BlobReport(desc, "mounted", mounted)
    log.info("push: %s: uploading", desc)
    shown = Progress("push", desc)
    try:
        store.put_blob(desc, source, shown)
    except VerifyError as e:
        shown.failed()
        raise VerifyError(f"{bundle}: {e.message}", code=e.code) from None
    except BaseException:
        shown.failed()
        raise
    return BlobReport(desc, "uploaded")


def _push_own_file(store: Store, bundle: Path, desc: Descriptor, offset: int, stop: threading.Event,
                   mount_from: Sequence[str]) -> BlobReport:
    """``_push_blob`` reading the bundle through its own descriptor, which no other thread
    closes under it."""
    with bundle.open("rb") as f:
        return _push_blob(store, bundle, desc, functools.partial(_file_source, f, offset, stop), mount_from)


def _file_source(f: BinaryIO, base: int, stop: threading.Event, start: int, length: int) -> FileRange:
    return FileRange(f, base + start, length, stop)


Chunk = typing.TypeVar("Chunk", bytes, memoryview)


def capped_blob(chunks: Iterator[Chunk], desc: Descriptor, where: str, verb: str = "pull") -> Generator[Chunk]:
    """The blob's chunks, refused as soon as they exceed the descriptor's size, and at the
    end unless they are exactly its size.  The digest is for the consumer to check."""
    received = 0
    progress = Progress(verb, desc)
    whole = False
    try:
        for chunk in chunks:
            received += len(chunk)
            if received > desc.size:
                raise VerifyError(f"{where}: blob {desc} is larger than its descriptor says", code="blob-too-large")
            progress(len(chunk))
            yield chunk
        whole = received == desc.size
    finally:
        if not whole:
            progress.failed()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
    if received < desc.size:
        raise VerifyError(f"{where}: blob {desc} ends after {received} bytes", code="truncated")


def checked_blob(chunks: Iterator[bytes], desc: Descriptor, where: str, verb: str = "pull") -> Generator[bytes]:
    """``capped_blob``, and at the end refused unless the chunks have the descriptor's digest."""
    digest = hashlib.sha256()
    for chunk in capped_blob(chunks, desc, where, verb):
        digest.update(chunk)
        yield chunk
    if f"sha256:{digest.hexdigest()}" != desc.digest:
        raise _mismatch(where, desc, digest.hexdigest())


def _mismatch(where: str, desc: Descriptor, observed: str) -> VerifyError:
    return VerifyError(f"{where}: blob {desc.title or desc.media_type}: sha256 observed {observed}, "
                       f"expected {desc.hex}", code="digest-mismatch")


def _fetch_small(store: Store, desc: Descriptor, cap: int, where: str) -> bytes:
    if desc.size > cap:
        raise VerifyError(f"{where}: blob {desc} exceeds the {cap}-byte limit for its kind", code="blob-too-large")
    return b"".join(checked_blob(store.iter_blob(desc), desc, where))


def fetch_artifact(ref: Ref, store: Store) -> Artifact:
    """The manifest, capped, checked against the reference's digest, parsed strictly."""
    store.probe()
    data = store.get_manifest(MAX_OCI_MANIFEST_BYTES)
    if ref.digest is not None and sha256_digest(data) != ref.digest:
        raise VerifyError(f"{ref}: manifest digest observed {sha256_digest(data)}, expected {ref.digest}",
                          code="digest-mismatch")
    return parse_artifact(data, str(ref))


def pull_bundle(ref: Ref, store: Store, out: Path, trust: TrustStore, *, state_file: Path | None = None) -> PullResult:
    """Fetch, check every digest, reassemble, verify; ``out`` appears only if all passed.

    ``verify_bundle`` runs as for a local file, with the pull as its opener: the
    signatures, trust, roles and rollback are checked from the config and signature blobs
    before any component is fetched; each component is hashed once, by the bundle writer,
    as it streams from the registry into the temp file (the bytes hashed are the bytes
    written); the file is then read back for its structure, not hashed again.
    """
    where = str(ref)
    artifact = fetch_artifact(ref, store)
    with atomic_path(out) as tmp:
        try:
            report = verify_bundle(tmp, trust, state_file=state_file, origin=Origin(where, artifact.digest),
                                   opener=functools.partial(_pulled, store, artifact, where, tmp, state_file))
        except MkspawnError as e:
            # The temp name means nothing to the user; the reference does.
            e.message = e.message.replace(str(tmp), where)
            raise
    log.info("pull: %s: %s verified, written to %s", where, artifact.digest, out)
    blobs = tuple(BlobReport(desc, "fetched") for desc in artifact.blobs)
    return PullResult(where, artifact.digest, out, _renamed(report, out), blobs)


@contextlib.contextmanager
def _pulled(store: Store, artifact: Artifact, where: str, tmp: Path, state_file: Path | None,
            check_head: HeadCheck) -> Iterator[tuple[BinaryIO, BundleContents]]:
    """``verify_bundle``'s opener for a pull: the head from the registry, then the bundle
    written into ``tmp`` with every component hashed on its way in."""
    config_bytes = _fetch_small(store, artifact.config, artifact.config.size, where)
    signature_layers = [layer for layer in artifact.layers if layer.media_type == SIGNATURE_MEDIA_TYPE]
    signatures = [_fetch_small(store, layer, MAX_SIGNATURE_BYTES, where) for layer in signature_layers]
    plan = plan_bundle(artifact, config_bytes, signatures, where)
    provenance = (None if plan.provenance_layer is None
                  else _fetch_small(store, plan.provenance_layer, MAX_PROVENANCE_BYTES, where))
    # Refused here, an untrusted or older bundle costs no component download.
    check_head(BundleHead(plan.manifest_bytes, plan.manifest, plan.signatures, provenance))
    if state_file is not None:
        refuse_rollback(tmp, plan.manifest, state_file)
    layers = {component.path: layer for component, layer in plan.component_layers}
    # Not "w+b": reopening with O_TRUNC makes ext4 start the whole file's write-back in
    # close() (auto_da_alloc), on the main thread, after the download.
    with tmp.open("r+b") as f:
        pool = BufferPool()
        flusher = WriteBehind(f.fileno())
        writer = SequentialWriter(f.fileno(), pool, flusher)
        # write_bundle only measures, hashes and writes each chunk, which a memoryview
        # serves as well as bytes (its ComponentSource type says bytes).
        components = [(path, typing.cast(ComponentSource, functools.partial(_component_chunks, store, layer, where,
                                                                            pool)))
                      for path, layer in layers.items()]
        try:
            # The writer stands in for the file: write_bundle only ever calls write().
            write_bundle(typing.cast(BinaryIO, writer), plan.manifest_bytes, signatures, components,
                         plan.manifest.provenance.source_date_epoch, provenance)
        except ComponentMismatch as e:
            raise _mismatch(where, layers[e.path], e.observed) from None
        finally:
            try:
                writer.close()
                flusher.close()
            except OSError as e:
                raise MkspawnError(f"writing {where}: {e.strerror or e}", code="write-failed") from None
        f.seek(0)
        try:
            contents = read_layout(f)
        except FormatError as e:
            raise VerifyError(f"{tmp}: {e.message}", code=e.code) from None
        yield f, contents


def _component_chunks(store: Store, layer: Descriptor, where: str, pool: BufferPool) -> Iterator[memoryview]:
    """The layer received on a second thread into ``pool``'s buffers, which the bundle
    writer hashes here and hands to the ``SequentialWriter`` (which gives them back)."""
    log.info("pull: %s: fetching", layer)
    if layer.size <= BUFFER_SIZE:  # one buffer: nothing to overlap, no thread worth starting
        return capped_blob(store.receive_blob(layer, pool), layer, where)
    return capped_blob(received_ahead(functools.partial(store.receive_blob, layer), pool), layer, where)


def _renamed(report: BundleReport, path: Path) -> BundleReport:
    return dataclasses.replace(report, path=path, size=os.path.getsize(path))
