"""SLSA provenance v1 as an in-toto Statement in a DSSE envelope (member ``provenance.dsse.json``).

The statement's subjects are every component and ``manifest.json`` itself, so it cannot
be a component (the manifest would then hold the digest of a document holding the
manifest's digest).  It sits beside the manifest like a signature: after the signature
members, before the components.  The SBOM, by contrast, is an ordinary component.

DSSE is a few lines over the keys we already have, so it is ours rather than
securesystemslib's: the same key ids, schemes and ``sign_bytes``/``verify_bytes`` as
the manifest signatures, a strict parser, and no second key abstraction or dependency
in the verify path.  Signatures are over PAE(payloadType, payload), never over JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mkimage.bundle.canon import JsonObject, JsonValue, canonical_json
from mkimage.bundle.manifest import MANIFEST_MEMBER, PROVENANCE_MEMBER, Manifest
from mkimage.errors import FormatError
from mkimage.signing.keys import PrivateKey, PublicKey, key_id, scheme_for, sign_bytes, verify_bytes

DSSE_MEDIA_TYPE = "application/vnd.dsse.envelope.v1+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
# Versioned: a change to what a build's parameters mean gets a new URI.
BUILD_TYPE = "urn:mkspawn:build-type:bundle:v1"
BUILDER_ID = "urn:mkspawn:builder:cli"
MAX_PROVENANCE_BYTES = 1 << 20
MAX_DSSE_SIGNATURES = 16


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(kind), kind, len(payload), payload)


@dataclass(frozen=True, slots=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, raw signature), sorted by keyid

    def to_bytes(self) -> bytes:
        sigs: list[JsonValue] = [{"keyid": k, "sig": base64.b64encode(s).decode()} for k, s in self.signatures]
        return canonical_json({"payload": base64.b64encode(self.payload).decode(), "payloadType": self.payload_type,
                               "signatures": sigs})

    @classmethod
    def from_bytes(cls, data: bytes, what: str = PROVENANCE_MEMBER) -> Envelope:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, ValueError) as e:
            raise FormatError(f"{what}: not JSON: {e}", code="bad-provenance") from None
        if not isinstance(doc, dict) or set(doc) != {"payload", "payloadType", "signatures"}:
            raise FormatError(f"{what}: expected a DSSE envelope (payload, payloadType, signatures)",
                              code="bad-provenance")
        if doc["payloadType"] != PAYLOAD_TYPE:
            raise FormatError(f"{what}: payloadType: observed {doc['payloadType']!r}, expected {PAYLOAD_TYPE}",
                              code="bad-provenance")
        payload = _b64(doc["payload"], f"{what}: payload")
        raw_sigs = doc["signatures"]
        if not isinstance(raw_sigs, list) or len(raw_sigs) > MAX_DSSE_SIGNATURES:
            raise FormatError(f"{what}: signatures: expected a list of at most {MAX_DSSE_SIGNATURES}",
                              code="bad-provenance")
        sigs = []
        for i, s in enumerate(raw_sigs):
            if not isinstance(s, dict) or set(s) != {"keyid", "sig"} or not isinstance(s["keyid"], str):
                raise FormatError(f"{what}: signatures[{i}]: expected {{keyid, sig}}", code="bad-provenance")
            sigs.append((s["keyid"], _b64(s["sig"], f"{what}: signatures[{i}].sig")))
        return cls(PAYLOAD_TYPE, payload, tuple(sigs))

    def signed(self, keys: Sequence[PrivateKey]) -> Envelope:
        """This envelope with a signature by each key (replacing one by the same key)."""
        by_id = dict(self.signatures)
        message = pae(self.payload_type, self.payload)
        for key in keys:
            by_id[key_id(key.public_key())] = sign_bytes(key, message)[1]
        return Envelope(self.payload_type, self.payload, tuple(sorted(by_id.items())))

    def verifies(self, keyid: str, key: PublicKey) -> bool:
        sig = dict(self.signatures).get(keyid)
        return sig is not None and verify_bytes(key, scheme_for(key).value, pae(self.payload_type, self.payload), sig)


def _b64(value: object, where: str) -> bytes:
    if not isinstance(value, str):
        raise FormatError(f"{where}: expected a base64 string", code="bad-provenance")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{where}: not valid base64", code="bad-provenance") from None


# ---- the statement ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class RecipeParameters:
    """What the user chose: the recipe (resolved, paths relative) and the --set overrides."""

    name: str  # the recipe file's base name
    resolved: Mapping[str, Any]  # the resolved recipe, every path relative or a system path
    overrides: tuple[str, ...]


def make_statement(manifest: Manifest, manifest_bytes: bytes, recipe: RecipeParameters) -> bytes:
    subjects: list[JsonValue] = [{"name": c.path, "digest": {"sha256": c.sha256}} for c in manifest.components]
    subjects.append({"name": MANIFEST_MEMBER, "digest": {"sha256": _sha256(manifest_bytes)}})
    prov = manifest.provenance
    dependencies: list[JsonValue] = [
        {"name": i.name, "digest": {"sha256": i.sha256}, "annotations": {"kind": i.kind.value}} for i in prov.inputs
    ]
    versions: JsonObject = {"mkspawn": prov.mkspawn_version, **dict(prov.tools)}
    statement: JsonObject = {
        "_type": STATEMENT_TYPE,
        "subject": sorted(subjects, key=lambda s: str(s["name"])),  # type: ignore[index,call-overload]
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"recipe": {"name": recipe.name, "resolved": _json(recipe.resolved)},
                                       "overrides": list(recipe.overrides)},
                "internalParameters": {"format_version": manifest.format_version,
                                       "source_date_epoch": prov.source_date_epoch},
                "resolvedDependencies": dependencies,
            },
            "runDetails": {"builder": {"id": BUILDER_ID, "version": versions}},
        },
    }
    return canonical_json(statement)


def _json(value: Any) -> JsonValue:
    # Recipe values are already plain data; the round trip drops anything canonical JSON refuses.
    return json.loads(json.dumps(value))  # type: ignore[no-any-return]


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class Statement:
    subjects: Mapping[str, str]  # name → sha256
    recipe: RecipeParameters
    inputs: tuple[tuple[str, str, str], ...]  # (kind, name, sha256)
    builder_id: str
    versions: Mapping[str, str]

    def to_summary(self) -> dict[str, object]:
        return {"builder": self.builder_id, "recipe": self.recipe.name, "overrides": list(self.recipe.overrides),
                "subjects": len(self.subjects), "inputs": len(self.inputs), "versions": dict(self.versions)}


def read_statement(payload: bytes, what: str = PROVENANCE_MEMBER) -> Statement:
    """The parts of an SLSA v1 statement mkspawn relies on; FormatError if any is off."""
    def bad(message: str) -> FormatError:
        return FormatError(f"{what}: statement: {message}", code="bad-provenance")

    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("_type") != STATEMENT_TYPE:
        raise bad(f"_type: expected {STATEMENT_TYPE}")
    if doc.get("predicateType") != PREDICATE_TYPE:
        raise bad(f"predicateType: observed {doc.get('predicateType')!r}, expected {PREDICATE_TYPE}")
    subjects: dict[str, str] = {}
    for i, s in enumerate(_list(doc.get("subject"), bad, "subject")):
        name, digest = s.get("name"), s.get("digest")
        sha = digest.get("sha256") if isinstance(digest, dict) else None
        if not isinstance(name, str) or not isinstance(sha, str) or name in subjects:
            raise bad(f"subject[{i}]: expected a unique name and a sha256 digest")
        subjects[name] = sha
    try:
        definition = doc["predicate"]["buildDefinition"]
        external = definition["externalParameters"]
        recipe = RecipeParameters(str(external["recipe"]["name"]), dict(external["recipe"]["resolved"]),
                                  tuple(str(o) for o in external["overrides"]))
        inputs = tuple((str(d["annotations"]["kind"]), str(d["name"]), str(d["digest"]["sha256"]))
                       for d in _list(definition["resolvedDependencies"], bad, "resolvedDependencies"))
        builder = doc["predicate"]["runDetails"]["builder"]
        versions = {str(k): str(v) for k, v in dict(builder["version"]).items()}
        builder_id = str(builder["id"])
    except (KeyError, TypeError, ValueError) as e:
        raise bad(f"predicate: missing or malformed {e}") from None
    return Statement(subjects, recipe, inputs, builder_id, versions)


def _list(value: object, bad: Any, field: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise bad(f"{field}: expected a list of objects")
    return value


def subject_problem(statement: Statement, manifest: Manifest, manifest_bytes: bytes) -> str | None:
    """What differs between the statement's subjects and the bundle, or None."""
    expected = {c.path: c.sha256 for c in manifest.components}
    expected[MANIFEST_MEMBER] = _sha256(manifest_bytes)
    for name in sorted(set(expected) | set(statement.subjects)):
        have, want = statement.subjects.get(name), expected.get(name)
        if have != want:
            if have is None:
                return f"subject {name!r} is missing"
            if want is None:
                return f"subject {name!r} is not in the bundle"
            return f"subject {name!r}: sha256 {have[:16]}…, the bundle has {want[:16]}…"
    return None


def make_envelope(manifest: Manifest, manifest_bytes: bytes, recipe: RecipeParameters,
                  signers: Sequence[PrivateKey]) -> bytes:
    """The provenance member: the statement in a DSSE envelope signed by ``signers`` (maybe none)."""
    return Envelope(PAYLOAD_TYPE, make_statement(manifest, manifest_bytes, recipe), ()).signed(signers).to_bytes()
