"""A bundle as an OCI artifact, and back: pure functions over bytes and records.

The OCI image manifest carries our own ``artifactType``; its config blob is the bundle's
canonical manifest.json (exact bytes), and its layers are the bundle's members after the
manifest, in bundle order: one per signature, then one per component.  A component's layer
digest is the manifest's sha256 of it, so two bundles sharing a kernel share that blob.
Because the bundle container is canonical, the members alone determine every byte of the
bundle: reassembly with the bundle writer reproduces the pushed file exactly.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mkimage.artifacts import Role
from mkimage.bundle.canon import canonical_json
from mkimage.bundle.container import (
    MAX_MANIFEST_BYTES,
    MAX_PROVENANCE_BYTES,
    MAX_SIGNATURE_BYTES,
    MAX_SIGNATURES,
    BundleContents,
)
from mkimage.bundle.manifest import PROVENANCE_MEMBER, SIGNATURE_DIR, Component, Manifest, Signature
from mkimage.errors import FormatError, RegistryError, VerifyError

OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
# A referrer's config: image-spec v1.1's empty descriptor, which requires an artifactType.
EMPTY_MEDIA_TYPE = "application/vnd.oci.empty.v1+json"
EMPTY_BLOB = b"{}"
ARTIFACT_TYPE = "application/vnd.mkspawn.bundle.v1"
CONFIG_MEDIA_TYPE = "application/vnd.mkspawn.bundle.manifest.v1+json"
SIGNATURE_MEDIA_TYPE = "application/vnd.mkspawn.bundle.signature.v1+json"
# The bundle's provenance member is a DSSE envelope; this is the media type other tools
# (cosign, in-toto) give one.
PROVENANCE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
TITLE = "org.opencontainers.image.title"
CREATED = "org.opencontainers.image.created"
VERSION = "org.opencontainers.image.version"
# distribution refuses manifests above 4 MiB; ours are a few KiB, so anything near the
# cap is not ours and is refused before it is parsed.
MAX_OCI_MANIFEST_BYTES = 4 << 20
MAX_CONFIG_BYTES = MAX_MANIFEST_BYTES

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Descriptor:
    """An OCI content descriptor; ``title`` is the bundle member the blob becomes."""

    media_type: str
    digest: str
    size: int
    title: str | None = None

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.title is not None:
            d["annotations"] = {TITLE: self.title}
        return d

    def __str__(self) -> str:
        return f"{self.title or self.media_type} ({self.digest[:19]}…, {self.size} bytes)"


@dataclass(frozen=True, slots=True)
class Artifact:
    """An OCI image manifest as pushed or pulled: the exact bytes and what they describe."""

    manifest_bytes: bytes
    config: Descriptor
    layers: tuple[Descriptor, ...]

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest_bytes)

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        return (self.config, *self.layers)


@dataclass(frozen=True, slots=True)
class BundlePlan:
    """A pulled artifact whose layers match its config: everything needed to reassemble."""

    manifest_bytes: bytes
    manifest: Manifest
    signature_layers: tuple[Descriptor, ...]
    signatures: tuple[tuple[bytes, Signature], ...]  # in bundle (member name) order
    provenance_layer: Descriptor | None
    component_layers: tuple[tuple[Component, Descriptor], ...]


def _created(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def artifact_for(contents: BundleContents) -> Artifact:
    """The OCI manifest for a structurally verified bundle; canonical JSON, so a bundle
    always maps to the same manifest digest."""
    manifest = contents.manifest
    config = Descriptor(CONFIG_MEDIA_TYPE, sha256_digest(contents.manifest_bytes), len(contents.manifest_bytes))
    layers = [Descriptor(SIGNATURE_MEDIA_TYPE, sha256_digest(raw), len(raw), sig.member_name)
              for raw, sig in contents.signatures]
    if contents.provenance is not None:
        layers.append(Descriptor(PROVENANCE_MEDIA_TYPE, sha256_digest(contents.provenance), len(contents.provenance),
                                 PROVENANCE_MEMBER))
    layers += [Descriptor(c.media_type, f"sha256:{c.sha256}", c.size, c.path) for c in manifest.components]
    document = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST_MEDIA_TYPE,
        "artifactType": ARTIFACT_TYPE,
        "config": config.to_dict(),
        "layers": [layer.to_dict() for layer in layers],
        "annotations": {
            CREATED: _created(manifest.provenance.source_date_epoch),
            TITLE: manifest.recipe_name,
            VERSION: manifest.recipe_version,
        },
    }
    return Artifact(canonical_json(document), config, tuple(layers))


def _at(where: str, what: str) -> str:
    return f"{where}: {what}"


def _descriptor(value: object, where: str, field: str) -> Descriptor:
    if not isinstance(value, Mapping):
        raise VerifyError(_at(where, f"{field}: expected an object"), code="bad-oci-manifest")
    media_type, digest, size = value.get("mediaType"), value.get("digest"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise VerifyError(_at(where, f"{field}.mediaType: expected a string"), code="bad-oci-manifest")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise VerifyError(_at(where, f"{field}.digest: observed {digest!r}, expected sha256:<64 lowercase hex>"),
                          code="bad-oci-manifest")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise VerifyError(_at(where, f"{field}.size: observed {size!r}, expected a non-negative integer"),
                          code="bad-oci-manifest")
    annotations = value.get("annotations", {})
    if not isinstance(annotations, Mapping):
        raise VerifyError(_at(where, f"{field}.annotations: expected an object"), code="bad-oci-manifest")
    title = annotations.get(TITLE)
    if title is not None and not isinstance(title, str):
        raise VerifyError(_at(where, f"{field}.annotations[{TITLE}]: expected a string"), code="bad-oci-manifest")
    return Descriptor(media_type, digest, size, title)


def parse_artifact(data: bytes, where: str) -> Artifact:
    """Decode a pulled OCI manifest; VerifyError unless it is a mkspawn bundle artifact.

    Other tools may have copied the manifest, so any valid JSON spelling is accepted: its
    digest is over the bytes as served, never a re-encoding.
    """
    if len(data) > MAX_OCI_MANIFEST_BYTES:
        raise VerifyError(_at(where, f"manifest is {len(data)} bytes, limit {MAX_OCI_MANIFEST_BYTES}"),
                          code="blob-too-large")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise VerifyError(_at(where, f"manifest is not JSON: {e}"), code="bad-oci-manifest") from None
    if not isinstance(doc, dict):
        raise VerifyError(_at(where, "manifest is not a JSON object"), code="bad-oci-manifest")
    if doc.get("schemaVersion") != 2:
        raise VerifyError(_at(where, f"schemaVersion: observed {doc.get('schemaVersion')!r}, expected 2"),
                          code="bad-oci-manifest")
    if doc.get("mediaType", OCI_MANIFEST_MEDIA_TYPE) != OCI_MANIFEST_MEDIA_TYPE:
        raise VerifyError(_at(where, f"mediaType: observed {doc.get('mediaType')!r}, "
                                     f"expected {OCI_MANIFEST_MEDIA_TYPE}"),
                          code="bad-oci-manifest")
    if doc.get("artifactType") != ARTIFACT_TYPE:
        raise VerifyError(_at(where, f"artifactType: observed {doc.get('artifactType')!r}, expected {ARTIFACT_TYPE} "
                      "(not a mkspawn bundle)"), code="not-a-bundle")
    config = _descriptor(doc.get("config"), where, "config")
    if config.media_type != CONFIG_MEDIA_TYPE:
        raise VerifyError(_at(where, f"config.mediaType: observed {config.media_type!r}, expected {CONFIG_MEDIA_TYPE}"),
                          code="layer-mismatch")
    if config.size > MAX_CONFIG_BYTES:
        raise VerifyError(_at(where, f"config blob is {config.size} bytes, limit {MAX_CONFIG_BYTES}"),
                          code="blob-too-large")
    layers = doc.get("layers")
    if not isinstance(layers, list):
        raise VerifyError(_at(where, "layers: expected an array"), code="bad-oci-manifest")
    descriptors = tuple(_descriptor(v, where, f"layers[{i}]") for i, v in enumerate(layers))
    signed = sum(1 for d in descriptors if d.media_type == SIGNATURE_MEDIA_TYPE)
    if signed > MAX_SIGNATURES:
        # Refused before any is fetched: the bundle format bounds the signature work too.
        raise VerifyError(_at(where, f"{signed} signature layers, limit {MAX_SIGNATURES}"),
                          code="too-many-signatures")
    return Artifact(data, config, descriptors)


def plan_bundle(artifact: Artifact, config_bytes: bytes, signatures: Sequence[bytes], where: str) -> BundlePlan:
    """Check that the layers are exactly the config's signatures and components.

    ``config_bytes`` and the signature blobs must already match their digests.  Every
    component layer must carry the manifest's path, media type, size and sha256, in the
    manifest's order; nothing else may be there.
    """
    try:
        manifest = Manifest.from_bytes(config_bytes)
    except FormatError as e:
        raise VerifyError(f"{where}: config blob: {e.message}", code=e.code) from None
    signature_layers = tuple(layer for layer in artifact.layers if layer.media_type == SIGNATURE_MEDIA_TYPE)
    if artifact.layers[: len(signature_layers)] != signature_layers:
        raise VerifyError(_at(where, "signature layers must come before the component layers"), code="layer-mismatch")
    if len(signatures) != len(signature_layers):
        raise ValueError("one signature blob per signature layer")
    titles = [layer.title for layer in signature_layers]
    if len(set(titles)) != len(titles) or titles != sorted(t or "" for t in titles):
        raise VerifyError(_at(where, "signature layers are not unique and sorted by title"), code="layer-mismatch")
    parsed: list[tuple[bytes, Signature]] = []
    for layer, raw in zip(signature_layers, signatures, strict=True):
        if layer.size > MAX_SIGNATURE_BYTES:
            raise VerifyError(_at(where, f"signature layer {layer} exceeds {MAX_SIGNATURE_BYTES} bytes"),
                              code="blob-too-large")
        try:
            signature = Signature.from_bytes(raw, what=str(layer.title))
        except FormatError as e:
            raise VerifyError(f"{where}: {e.message}", code=e.code) from None
        if layer.title != signature.member_name:
            raise VerifyError(_at(where, f"signature layer titled {layer.title!r} holds a signature by "
                                         f"{signature.keyid}"),
                              code="layer-mismatch")
        parsed.append((raw, signature))

    rest = artifact.layers[len(signature_layers) :]
    provenance_layer = None
    if rest and rest[0].media_type == PROVENANCE_MEDIA_TYPE:
        provenance_layer, rest = rest[0], rest[1:]
        if provenance_layer.title != PROVENANCE_MEMBER:
            raise VerifyError(_at(where, f"provenance layer titled {provenance_layer.title!r}, expected "
                                         f"{PROVENANCE_MEMBER!r}"), code="layer-mismatch")
        if provenance_layer.size > MAX_PROVENANCE_BYTES:
            raise VerifyError(_at(where, f"provenance layer {provenance_layer} exceeds {MAX_PROVENANCE_BYTES} bytes"),
                              code="blob-too-large")
    titles = [layer.title for layer in rest]
    paths = [c.path for c in manifest.components]
    for path in paths:
        if path not in titles:
            raise VerifyError(_at(where, f"no layer for component {path!r} named in the config"), code="missing-layer")
    for layer in rest:
        if layer.title in paths:
            continue
        if layer.title is not None and layer.title.startswith(SIGNATURE_DIR):
            raise VerifyError(_at(where, f"layer {layer}: media type {layer.media_type!r} for a signature, expected "
                          f"{SIGNATURE_MEDIA_TYPE}"), code="layer-mismatch")
        raise VerifyError(_at(where, f"layer {layer} is not a component of the config"), code="extra-layer")
    if titles != paths:
        raise VerifyError(_at(where, f"component layers are {titles}, expected {paths} "
                                     "(the config's order, once each)"),
                          code="layer-mismatch")
    pairs: list[tuple[Component, Descriptor]] = []
    for component, layer in zip(manifest.components, rest, strict=True):
        for field, observed, wanted in (("media type", layer.media_type, component.media_type),
                                        ("digest", layer.digest, f"sha256:{component.sha256}"),
                                        ("size", layer.size, component.size)):
            if observed != wanted:
                raise VerifyError(_at(where, f"layer {component.path!r} {field}: observed {observed!r}, "
                              f"expected {wanted!r} from the config"), code="layer-mismatch")
        pairs.append((component, layer))
    return BundlePlan(config_bytes, manifest, signature_layers, tuple(parsed), provenance_layer, tuple(pairs))


# ---- referrers: the SBOM and the provenance as artifacts about the bundle ---------------


@dataclass(frozen=True, slots=True)
class Referrer:
    """A manifest whose ``subject`` is the bundle's, carrying one member's exact bytes, so
    registry tooling that looks for an SBOM or attestation of an image finds ours."""

    manifest_bytes: bytes
    artifact_type: str
    blob: Descriptor

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest_bytes)

    def index_entry(self) -> dict[str, object]:
        return {"mediaType": OCI_MANIFEST_MEDIA_TYPE, "digest": self.digest, "size": len(self.manifest_bytes),
                "artifactType": self.artifact_type}


EMPTY_CONFIG = Descriptor(EMPTY_MEDIA_TYPE, sha256_digest(EMPTY_BLOB), len(EMPTY_BLOB))


def referrers_for(contents: BundleContents, subject: Artifact) -> tuple[Referrer, ...]:
    """The SBOM component and the provenance envelope (whichever the bundle has), each
    pointing at ``subject``.  Their blobs are the bundle's own layers: nothing new to upload
    but the two-byte empty config."""
    members: list[Descriptor] = [layer for layer, component in _component_layers(contents, subject)
                                 if component.role == Role.SBOM]
    members += [layer for layer in subject.layers if layer.media_type == PROVENANCE_MEDIA_TYPE]
    created = _created(contents.manifest.provenance.source_date_epoch)
    referrers = []
    for blob in members:
        document = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE,
            "artifactType": blob.media_type,
            "config": EMPTY_CONFIG.to_dict(),
            "layers": [blob.to_dict()],
            "subject": {"mediaType": OCI_MANIFEST_MEDIA_TYPE, "digest": subject.digest,
                        "size": len(subject.manifest_bytes)},
            "annotations": {CREATED: created},
        }
        referrers.append(Referrer(canonical_json(document), blob.media_type, blob))
    return tuple(referrers)


def _component_layers(contents: BundleContents, artifact: Artifact) -> list[tuple[Descriptor, Component]]:
    by_title = {layer.title: layer for layer in artifact.layers}
    return [(by_title[c.path], c) for c in contents.manifest.components]


def fallback_tag(digest: str) -> str:
    """distribution-spec v1.1's referrers tag schema: ``sha256-<hex>`` for ``sha256:<hex>``."""
    return digest.replace(":", "-", 1)


def merged_referrers_index(existing: bytes | None, referrers: Sequence[Referrer], where: str) -> bytes | None:
    """The fallback index with ``referrers`` added to what ``existing`` lists (other tools'
    signatures stay), or None when it already lists them all.  Something other than an
    image index under the tag is refused rather than overwritten, as the spec asks."""
    doc: dict[str, object] = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
    if existing is not None:
        try:
            found = json.loads(existing)
        except (UnicodeDecodeError, ValueError, RecursionError):
            found = None
        if not isinstance(found, dict) or found.get("mediaType", INDEX_MEDIA_TYPE) != INDEX_MEDIA_TYPE \
                or not isinstance(found.get("manifests"), list):
            raise RegistryError(f"{where}: the referrers tag holds something other than an OCI image index; "
                                "not replacing it", code="registry-error")
        doc = found
    manifests = doc["manifests"]
    assert isinstance(manifests, list)
    listed = {m.get("digest") for m in manifests if isinstance(m, dict)}
    added = [r.index_entry() for r in referrers if r.digest not in listed]
    if not added:
        return None
    doc["manifests"] = [*manifests, *added]
    # Not canonical_json: another tool's index may hold values outside its subset.
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
