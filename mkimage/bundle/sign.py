"""`mkspawn sign`: add signatures to an existing bundle.

The manifest bytes are kept exactly; only signature members change, so a bundle
signed by several parties (CI, then a release key) stays byte-identical elsewhere.

A signature already in the bundle that does not verify under a key the signer knows
(the trust store, or one of the signing keys) means the manifest was changed after it
was signed; signing it again would vouch for the change, so it is refused.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from mkimage.bundle.container import MAX_SIGNATURES, BundleHead, iter_component, write_bundle
from mkimage.bundle.manifest import PROVENANCE_MEMBER, Signature
from mkimage.bundle.provenance import Envelope, subject_problem
from mkimage.errors import UsageError, VerifyError
from mkimage.outputs import atomic_output
from mkimage.signing.keys import PrivateKey, key_id, sign_bytes
from mkimage.signing.trust import TrustedKey, TrustStore


def make_signature(key: PrivateKey, manifest_bytes: bytes) -> bytes:
    scheme, sig = sign_bytes(key, manifest_bytes)
    return Signature(keyid=key_id(key.public_key()), scheme=scheme, sig=sig.hex()).to_bytes()


def _known_keys(trust: TrustStore, signers: Sequence[PrivateKey], path: Path) -> TrustStore:
    keys = dict(trust.keys)
    for key in signers:
        public = key.public_key()
        keys.setdefault(key_id(public), TrustedKey(key_id(public), public, path))
    return TrustStore(trust.directory, keys)


def sign_bundle(path: Path, out: Path, signers: Sequence[PrivateKey], trust: TrustStore | None = None) -> None:
    # Only here: a build signs with make_signature and never reads a bundle back.
    from mkimage.bundle.verify import SigStatus, check_signatures, opened_bundle

    known = _known_keys(trust or TrustStore(None), signers, path)

    def check_head(head: BundleHead) -> None:
        for report in check_signatures(head, known):
            if report.status is SigStatus.INVALID:
                raise VerifyError(
                    f"{path}: the signature by {report.keyid[:16]}… does not verify over the manifest "
                    "(changed after it was signed); refusing to sign it", code="bad-signature")
        if head.provenance is not None:
            envelopes.append(_checked_envelope(path, head, known))

    envelopes: list[Envelope] = []
    with opened_bundle(path, check_head) as (f, contents):
        by_keyid: dict[str, bytes] = {sig.keyid: raw for raw, sig in contents.signatures}
        for key in signers:
            raw = make_signature(key, contents.manifest_bytes)
            by_keyid[Signature.from_bytes(raw).keyid] = raw
        if len(by_keyid) > MAX_SIGNATURES:
            raise UsageError(f"{path}: {len(by_keyid)} signatures would exceed the limit of {MAX_SIGNATURES}",
                             code="too-many-signatures")
        components = [
            (c.path, functools.partial(iter_component, f, contents, c.path))
            for c in contents.manifest.components
        ]
        with atomic_output(out) as dest:
            write_bundle(dest, contents.manifest_bytes, list(by_keyid.values()), components,
                         contents.manifest.provenance.source_date_epoch,
                         provenance=envelopes[0].signed(signers).to_bytes() if envelopes else None)


def _checked_envelope(path: Path, head: BundleHead, known: TrustStore) -> Envelope:
    """The provenance is signed along with the manifest, so the same rule holds: a
    signature that no longer verifies, or a statement about other bytes, is not vouched for."""
    from mkimage.bundle.attestations import envelope_signatures, read_envelope

    envelope, statement = read_envelope(path, head)
    for keyid, status in envelope_signatures(envelope, known):
        if status == "invalid":
            raise VerifyError(f"{path}: {PROVENANCE_MEMBER}: the signature by {keyid[:16]}… does not verify over "
                              "the statement (changed after it was signed); refusing to sign it",
                              code="bad-provenance-signature")
    problem = subject_problem(statement, head.manifest, head.manifest_bytes)
    if problem is not None:
        raise VerifyError(f"{path}: {PROVENANCE_MEMBER}: {problem}; refusing to sign it", code="provenance-mismatch")
    return envelope
