"""An OCI image layout directory (image-spec ``image-layout.md``) as a push/pull store.

``oci-layout`` names the layout version, ``blobs/sha256/<hex>`` holds every blob, and
``index.json`` lists the manifests, a tag being an ``org.opencontainers.image.ref.name``
annotation.  skopeo and oras read the same directory.  Every file is written atomically;
``index.json`` is rewritten whole, so two pushes into one directory at once are not
supported (the second rename wins).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from mkimage.errors import InputError, VerifyError
from mkimage.outputs import atomic_output, write_atomic
from mkimage.registry.artifact import (
    ARTIFACT_TYPE,
    INDEX_MEDIA_TYPE,
    OCI_MANIFEST_MEDIA_TYPE,
    Descriptor,
    sha256_digest,
)
from mkimage.registry.client import BlobSource
from mkimage.registry.reference import DEFAULT_TAG, LayoutRef
from mkimage.registry.streams import BufferPool

LAYOUT_FILE = "oci-layout"
LAYOUT_VERSION = "1.0.0"
INDEX_FILE = "index.json"
REF_NAME = "org.opencontainers.image.ref.name"
MAX_INDEX_BYTES = 16 << 20
READ_CHUNK = 1 << 20


class LayoutStore:
    """One manifest (by tag or digest) in an OCI image layout directory."""

    def __init__(self, ref: LayoutRef) -> None:
        self.ref = ref
        self.directory = ref.directory

    def _blob_path(self, digest: str) -> Path:
        return self.directory / "blobs" / "sha256" / digest.split(":", 1)[1]

    # ---- reading -------------------------------------------------------------------

    def probe(self) -> None:
        if not (self.directory / LAYOUT_FILE).is_file():
            raise InputError(f"{self.ref}: {self.directory} is not an OCI image layout (no {LAYOUT_FILE})",
                             code="no-such-file")

    def _index(self) -> dict[str, object]:
        path = self.directory / INDEX_FILE
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_INDEX_BYTES + 1)
        except FileNotFoundError:
            return {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
        except OSError as e:
            raise InputError(f"{path}: cannot read: {e.strerror}", code="unreadable-input") from None
        try:
            doc = json.loads(raw) if len(raw) <= MAX_INDEX_BYTES else None
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not isinstance(doc.get("manifests"), list):
            raise VerifyError(f"{path}: not an OCI image index of at most {MAX_INDEX_BYTES} bytes",
                              code="bad-oci-layout")
        return doc

    def _find(self) -> str:
        """The manifest digest the reference names."""
        if self.ref.digest is not None:
            return self.ref.digest
        tag = self.ref.tag or DEFAULT_TAG
        manifests = self._index()["manifests"]
        assert isinstance(manifests, list)
        for entry in manifests:
            if isinstance(entry, dict) and isinstance(entry.get("annotations"), dict) \
                    and entry["annotations"].get(REF_NAME) == tag and isinstance(entry.get("digest"), str):
                return str(entry["digest"])
        raise InputError(f"{self.ref}: no manifest tagged {tag!r} in {self.directory / INDEX_FILE}",
                         code="unknown-reference")

    def get_manifest(self, cap: int) -> bytes:
        digest = self._find()
        desc = Descriptor(OCI_MANIFEST_MEDIA_TYPE, digest, cap)
        path = self._blob_path(digest)
        if not path.is_file():
            raise InputError(f"{self.ref}: manifest {digest} is not in {self.directory}", code="unknown-reference")
        if path.stat().st_size > cap:
            raise VerifyError(f"{self.ref}: manifest is {path.stat().st_size} bytes, limit {cap}",
                              code="blob-too-large")
        return b"".join(self._read(path, desc))

    def iter_blob(self, desc: Descriptor) -> Iterator[bytes]:
        return self._read(self._existing_blob(desc), desc)

    def _existing_blob(self, desc: Descriptor) -> Path:
        path = self._blob_path(desc.digest)
        if not path.is_file():
            raise VerifyError(f"{self.ref}: blob {desc} is in the manifest but not in {self.directory}",
                              code="blob-unknown")
        return path

    def receive_blob(self, desc: Descriptor, pool: BufferPool) -> Iterator[memoryview]:
        """``iter_blob`` into buffers of ``pool`` (the consumer gives each back)."""
        path = self._existing_blob(desc)
        left = desc.size + 1  # one byte past the size, as in _read
        with path.open("rb", buffering=0) as f:
            while left:
                buffer = pool.take()
                n = f.readinto(memoryview(buffer)[:left])
                if not n:
                    pool.give(buffer)
                    return
                left -= n
                yield memoryview(buffer)[:n]

    def _read(self, path: Path, desc: Descriptor) -> Iterator[bytes]:
        # Read one byte past the size, so an oversized file is seen without reading it all.
        left = desc.size + 1
        with path.open("rb") as f:
            while left and (chunk := f.read(min(READ_CHUNK, left))):
                left -= len(chunk)
                yield chunk

    # ---- writing -------------------------------------------------------------------

    def prepare(self) -> None:
        layout = self.directory / LAYOUT_FILE
        if not layout.exists():
            write_atomic(layout, json.dumps({"imageLayoutVersion": LAYOUT_VERSION}).encode())

    def has_blob(self, desc: Descriptor) -> bool:
        path = self._blob_path(desc.digest)
        return path.is_file() and path.stat().st_size == desc.size

    def put_blob(self, desc: Descriptor, source: BlobSource, progress: Callable[[int], None]) -> None:
        """Copied and hashed on the way; a source that no longer matches its digest is refused."""
        digest = hashlib.sha256()
        body = source(0, desc.size)
        with atomic_output(self._blob_path(desc.digest)) as out:
            while chunk := body.read(READ_CHUNK):
                digest.update(chunk)
                out.write(chunk)
                progress(len(chunk))
            if f"sha256:{digest.hexdigest()}" != desc.digest:
                raise VerifyError(f"{self.ref}: {desc}: the data read has sha256 {digest.hexdigest()}",
                                  code="digest-mismatch")

    def mount_blob(self, desc: Descriptor, repositories: Sequence[str]) -> str | None:
        return None  # one directory holds one repository's blobs

    def put_manifest(self, data: bytes, tag: str) -> str:
        digest = sha256_digest(data)
        write_atomic(self._blob_path(digest), data)
        self._tag({"mediaType": OCI_MANIFEST_MEDIA_TYPE, "digest": digest, "size": len(data),
                   "artifactType": ARTIFACT_TYPE}, tag)
        return digest

    def put_referrer(self, data: bytes, digest: str) -> bool:
        """Stored as a blob; the fallback index tagged in index.json is what lists it (oras
        and skopeo reach it from there), as a registry without the referrers API does."""
        write_atomic(self._blob_path(digest), data)
        return False

    def get_index(self, tag: str, cap: int) -> bytes | None:
        for entry in self._index()["manifests"]:  # type: ignore[attr-defined]
            if isinstance(entry, dict) and isinstance(entry.get("annotations"), dict) \
                    and entry["annotations"].get(REF_NAME) == tag and isinstance(entry.get("digest"), str):
                path = self._blob_path(entry["digest"])
                if not path.is_file():
                    return None
                if path.stat().st_size > cap:
                    raise VerifyError(f"{path}: index {tag} is {path.stat().st_size} bytes, limit {cap}",
                                      code="blob-too-large")
                return path.read_bytes()
        return None

    def put_index(self, data: bytes, tag: str) -> None:
        digest = sha256_digest(data)
        write_atomic(self._blob_path(digest), data)
        self._tag({"mediaType": INDEX_MEDIA_TYPE, "digest": digest, "size": len(data)}, tag)

    def _tag(self, entry: dict[str, object], tag: str) -> None:
        """List ``entry`` in index.json under ``tag``, replacing what the tag named before."""
        index = self._index()
        manifests = [m for m in index["manifests"]  # type: ignore[attr-defined]
                     if not (isinstance(m, dict) and isinstance(m.get("annotations"), dict)
                             and m["annotations"].get(REF_NAME) == tag)]
        manifests.append({**entry, "annotations": {REF_NAME: tag}})
        index.update({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests})
        write_atomic(self.directory / INDEX_FILE, (json.dumps(index, indent=2, sort_keys=True) + "\n").encode())
