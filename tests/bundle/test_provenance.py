"""The provenance member: an SLSA v1 in-toto statement in a DSSE envelope, signed by the
bundle's keys over the standard PAE, and refused by verify in every way it can be wrong."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from mkimage.bundle.container import read_bundle, write_bundle
from mkimage.bundle.manifest import PROVENANCE_MEMBER
from mkimage.bundle.provenance import PAYLOAD_TYPE, PREDICATE_TYPE, STATEMENT_TYPE, Envelope
from mkimage.bundle.verify import verify_bundle
from mkimage.errors import VerifyError
from mkimage.signing.keys import Algorithm, PrivateKey, generate_key
from mkimage.signing.trust import load_trust_store
from tests.bundle.evidence_helpers import KEYS, build, member
from tests.bundle.forge import signing_key, write_signed
from tests.conftest import run_mkspawn as mkspawn


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, synthetic_kernel: Path) -> Path:
    root = tmp_path_factory.mktemp("provenance")
    out = root / "b.mkb"
    build(root / "recipe", synthetic_kernel, out, [signing_key()], overrides=['initramfs.command="echo set"'])
    return out


@pytest.fixture
def trust(tmp_path: Path) -> Path:
    (tmp_path / "trust").mkdir()
    shutil.copy(KEYS / "test-ed25519.pub.pem", tmp_path / "trust")
    return tmp_path / "trust"


def _envelope(bundle: Path) -> dict[str, object]:
    return json.loads(member(bundle, PROVENANCE_MEMBER))  # type: ignore[no-any-return]


def _statement(bundle: Path) -> dict[str, object]:
    return json.loads(base64.b64decode(str(_envelope(bundle)["payload"])))  # type: ignore[no-any-return]


def test_statement_names_every_component_and_the_manifest(bundle: Path) -> None:
    statement = _statement(bundle)
    assert statement["_type"] == STATEMENT_TYPE and statement["predicateType"] == PREDICATE_TYPE
    with bundle.open("rb") as f:
        contents = read_bundle(f)
    expected = {c.path: c.sha256 for c in contents.manifest.components}
    expected["manifest.json"] = hashlib.sha256(contents.manifest_bytes).hexdigest()
    assert {s["name"]: s["digest"]["sha256"] for s in statement["subject"]} == expected  # type: ignore[attr-defined]


def test_build_definition_is_the_resolved_recipe_with_relative_paths(bundle: Path) -> None:
    definition = _statement(bundle)["predicate"]["buildDefinition"]  # type: ignore[index]
    external = definition["externalParameters"]
    assert external["overrides"] == ['initramfs.command="echo set"']
    resolved = external["recipe"]["resolved"]
    assert resolved["kernel"]["image"] == "bzImage" and resolved["initramfs"]["command"] == "echo set"
    assert resolved["initramfs"]["files"] == [{"src": "motd", "dst": "/etc/motd"}]
    text = json.dumps(_statement(bundle))
    assert str(bundle.parent) not in text and "/tmp/" not in text
    kinds = {d["annotations"]["kind"] for d in definition["resolvedDependencies"]}
    assert {"recipe", "prebuilt", "file"} <= kinds
    assert all(len(d["digest"]["sha256"]) == 64 for d in definition["resolvedDependencies"])
    builder = _statement(bundle)["predicate"]["runDetails"]["builder"]  # type: ignore[index]
    assert builder["id"] and {"mkspawn", "python"} <= set(builder["version"])


def _pae(payload_type: bytes, body: bytes) -> bytes:
    # Written out from the DSSE v1 spec, independently of mkimage's pae().
    return b"DSSEv1 " + str(len(payload_type)).encode() + b" " + payload_type + b" " + \
        str(len(body)).encode() + b" " + body


def _verify_independently(envelope: dict[str, object], public: object) -> None:
    body = base64.b64decode(str(envelope["payload"]))
    (sig,) = envelope["signatures"]  # type: ignore[misc]
    raw = base64.b64decode(sig["sig"])
    message = _pae(str(envelope["payloadType"]).encode(), body)
    if isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(raw, message)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(raw, message, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(raw, message, padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32), hashes.SHA256())


def test_the_dsse_signature_verifies_with_plain_cryptography(bundle: Path) -> None:
    envelope = _envelope(bundle)
    assert envelope["payloadType"] == PAYLOAD_TYPE
    public = serialization.load_pem_public_key((KEYS / "test-ed25519.pub.pem").read_bytes())
    _verify_independently(envelope, public)
    # ...and fails over anything but the PAE: the bare payload, or the JSON envelope.
    (sig,) = envelope["signatures"]  # type: ignore[misc]
    assert isinstance(public, ed25519.Ed25519PublicKey)
    with pytest.raises(InvalidSignature):
        public.verify(base64.b64decode(sig["sig"]), base64.b64decode(str(envelope["payload"])))
    with pytest.raises(InvalidSignature):
        public.verify(base64.b64decode(sig["sig"]), member(bundle, PROVENANCE_MEMBER))


@pytest.mark.parametrize("algorithm", [Algorithm.ECDSA_P256, Algorithm.RSA3072])
def test_every_key_type_signs_the_envelope(algorithm: Algorithm) -> None:
    key: PrivateKey = generate_key(algorithm)
    envelope = Envelope(PAYLOAD_TYPE, b'{"_type":"x"}', ()).signed([key])
    _verify_independently(json.loads(envelope.to_bytes()), key.public_key())


def test_sign_adds_its_key_to_the_envelope_too(tmp_path: Path, bundle: Path, trust: Path) -> None:
    copy = tmp_path / "b.mkb"
    shutil.copy(bundle, copy)
    assert mkspawn("sign", copy, "--key", KEYS / "other-ed25519.pem").returncode == 0
    assert len(_envelope(copy)["signatures"]) == 2  # type: ignore[arg-type]
    assert _statement(copy) == _statement(bundle)
    shutil.copy(KEYS / "other-ed25519.pub.pem", trust)
    report = verify_bundle(copy, load_trust_store(trust, must_exist=True))
    assert report.evidence is not None and [s for _, s in report.evidence.signatures] == ["trusted", "trusted"]


def test_unsigned_builds_are_byte_identical(tmp_path: Path, synthetic_kernel: Path) -> None:
    one, two = tmp_path / "1.mkb", tmp_path / "2.mkb"
    build(tmp_path / "a", synthetic_kernel, one)
    build(tmp_path / "b" / "deeper", synthetic_kernel, two)
    assert one.read_bytes() == two.read_bytes()
    assert _envelope(one)["signatures"] == []


# ---- refusals: one line naming the member, exit 3 ----------------------------------

def _rewrite(src: Path, out: Path, provenance: bytes | None) -> Path:
    with src.open("rb") as f:
        contents = read_bundle(f)
        data = src.read_bytes()
    parts = [(c.path, lambda o=contents.component_offsets[c.path]: [data[o[0]:o[0] + o[1]]])
             for c in contents.manifest.components]
    buf = io.BytesIO()
    write_bundle(buf, contents.manifest_bytes, [raw for raw, _ in contents.signatures], parts,
                 contents.manifest.provenance.source_date_epoch, provenance=provenance)
    out.write_bytes(buf.getvalue())
    return out


def _tampered(bundle: Path, out: Path, edit: str) -> Path:
    envelope = _envelope(bundle)
    statement = _statement(bundle)
    if edit == "subject":
        statement["subject"][0]["digest"]["sha256"] = "0" * 64  # type: ignore[index]
    payload = json.dumps(statement).encode()
    if edit == "subject-resigned":
        statement["subject"].pop()  # type: ignore[attr-defined]
        env = Envelope(PAYLOAD_TYPE, json.dumps(statement).encode(), ()).signed([signing_key()])
        return _rewrite(bundle, out, env.to_bytes())
    envelope["payload"] = base64.b64encode(payload).decode()
    if edit == "unsigned":
        envelope["signatures"] = []
    if edit == "untrusted":
        env = Envelope(PAYLOAD_TYPE, base64.b64decode(str(_envelope(bundle)["payload"])), ())
        return _rewrite(bundle, out, env.signed([generate_key(Algorithm.ED25519)]).to_bytes())
    if edit == "malformed":
        return _rewrite(bundle, out, b'{"payload": 1}')
    if edit == "missing":
        return _rewrite(bundle, out, None)
    return _rewrite(bundle, out, json.dumps(envelope).encode())


@pytest.mark.parametrize(("edit", "code"), [
    ("missing", "missing-provenance"),
    ("malformed", "bad-provenance"),
    ("unsigned", "unsigned-provenance"),
    ("untrusted", "untrusted-provenance"),
    ("subject", "bad-provenance-signature"),  # the payload changed under the signature
    ("subject-resigned", "provenance-mismatch"),  # signed by the trusted key, but about other bytes
])
def test_verify_refuses_bad_provenance(tmp_path: Path, bundle: Path, trust: Path, edit: str, code: str) -> None:
    bad = _tampered(bundle, tmp_path / "bad.mkb", edit)
    with pytest.raises(VerifyError) as e:
        verify_bundle(bad, load_trust_store(trust, must_exist=True))
    assert e.value.code == code and PROVENANCE_MEMBER in e.value.message
    done = mkspawn("verify", bad, "--trust", trust)
    assert done.returncode == 3 and len(done.stderr.splitlines()) == 1, done.stderr
    assert f"[{code}]" in done.stderr and PROVENANCE_MEMBER in done.stderr


def test_forged_bundles_carry_evidence_too(tmp_path: Path, trust: Path) -> None:
    report = verify_bundle(write_signed(tmp_path / "f.mkb"), load_trust_store(trust, must_exist=True))
    assert report.evidence is not None


def test_sbom_and_provenance_verbs(bundle: Path) -> None:
    done = mkspawn("provenance", bundle, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["_type"] == STATEMENT_TYPE
    done = mkspawn("sbom", bundle, "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["bomFormat"] == "CycloneDX"
    text = mkspawn("inspect", bundle).stdout
    assert "sbom:" in text and "provenance:" in text
    assert "subjects" in mkspawn("provenance", bundle).stdout
