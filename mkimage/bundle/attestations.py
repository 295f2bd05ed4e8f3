"""What verify and inspect check of a bundle's evidence: the DSSE provenance envelope
beside the manifest and the SBOM component.

The envelope is judged before any component is hashed (it is small and signed, like
the manifest): it must be there, parse, be signed by a trusted key with no invalid
signature claiming one, and name exactly the bundle's components and manifest as its
subjects.  The SBOM is a component, so its bytes are already bound to the manifest;
what is checked is that it is CycloneDX 1.6 and records each other component with the
manifest's digest.  Every refusal is one line naming the member (exit 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mkimage.bundle.container import BundleContents, BundleHead, iter_component
from mkimage.bundle.manifest import PROVENANCE_MEMBER, Role
from mkimage.bundle.provenance import Envelope, Statement, read_statement, subject_problem
from mkimage.bundle.sbom import SBOM_MEMBER, SbomSummary, read_sbom
from mkimage.errors import FormatError, VerifyError
from mkimage.signing.trust import TrustStore


@dataclass(frozen=True, slots=True)
class Evidence:
    statement: Statement
    signatures: tuple[tuple[str, str], ...]  # (keyid, "trusted" | "untrusted" | "invalid")
    sbom: SbomSummary | None

    def to_dict(self) -> dict[str, object]:
        return {"provenance": {**self.statement.to_summary(),
                               "signatures": [{"keyid": k, "status": s} for k, s in self.signatures]},
                "sbom": None if self.sbom is None else self.sbom.to_dict()}


def read_envelope(path: Path, head: BundleHead) -> tuple[Envelope, Statement]:
    if head.provenance is None:
        raise VerifyError(f"{path}: {PROVENANCE_MEMBER}: missing; the bundle carries no provenance",
                          code="missing-provenance")
    try:
        envelope = Envelope.from_bytes(head.provenance)
        statement = read_statement(envelope.payload)
    except FormatError as e:
        raise VerifyError(f"{path}: {e.message}", code=e.code) from None
    return envelope, statement


def envelope_signatures(envelope: Envelope, trust: TrustStore) -> tuple[tuple[str, str], ...]:
    statuses = []
    for keyid, _sig in envelope.signatures:
        trusted = trust.get(keyid)
        if trusted is None:
            statuses.append((keyid, "untrusted"))
        else:
            statuses.append((keyid, "trusted" if envelope.verifies(keyid, trusted.key) else "invalid"))
    return tuple(statuses)


def check_provenance(path: Path, head: BundleHead, trust: TrustStore) -> tuple[Statement, tuple[tuple[str, str], ...]]:
    """Refuse (VerifyError) unless the envelope is well formed, trusted and about this bundle."""
    envelope, statement = read_envelope(path, head)
    statuses = envelope_signatures(envelope, trust)
    if not statuses:
        raise VerifyError(f"{path}: {PROVENANCE_MEMBER}: the DSSE envelope is not signed", code="unsigned-provenance")
    for keyid, status in statuses:
        if status == "invalid":
            raise VerifyError(f"{path}: {PROVENANCE_MEMBER}: signature by trusted key {keyid[:16]}… does not verify "
                              "over the statement (tampered statement or wrong key)", code="bad-provenance-signature")
    if not any(status == "trusted" for _, status in statuses):
        ids = ", ".join(k[:16] + "…" for k, _ in statuses)
        raise VerifyError(f"{path}: {PROVENANCE_MEMBER}: signed only by untrusted key(s) {ids}",
                          code="untrusted-provenance")
    problem = subject_problem(statement, head.manifest, head.manifest_bytes)
    if problem is not None:
        raise VerifyError(f"{path}: {PROVENANCE_MEMBER}: {problem}", code="provenance-mismatch")
    return statement, statuses


def read_bundle_sbom(path: Path, f: BinaryIO, contents: BundleContents) -> SbomSummary | None:
    sbom = next((c for c in contents.manifest.components if c.role is Role.SBOM), None)
    if sbom is None:
        return None
    data = b"".join(iter_component(f, contents, sbom.path))
    try:
        return read_sbom(data, sbom.path)
    except FormatError as e:
        raise VerifyError(f"{path}: {e.message}", code=e.code) from None


def check_sbom(path: Path, f: BinaryIO, contents: BundleContents) -> SbomSummary:
    """Refuse unless the SBOM is there and records every other component by its digest."""
    summary = read_bundle_sbom(path, f, contents)
    if summary is None:
        raise VerifyError(f"{path}: {SBOM_MEMBER}: missing; the manifest names no sbom component", code="missing-sbom")
    for c in contents.manifest.components:
        if c.role is Role.SBOM:
            continue
        recorded = summary.member_hashes.get(c.path)
        if recorded != c.sha256:
            what = "does not list" if recorded is None else f"records sha256 {recorded[:16]}… for"
            raise VerifyError(f"{path}: {SBOM_MEMBER}: {what} component {c.path!r} (the manifest has "
                              f"{c.sha256[:16]}…)", code="sbom-mismatch")
    return summary


def read_evidence(path: Path, f: BinaryIO, contents: BundleContents, trust: TrustStore) -> Evidence | None:
    """For inspect: the evidence as it is, signatures reported rather than required."""
    head = BundleHead(contents.manifest_bytes, contents.manifest, contents.signatures, contents.provenance)
    if contents.provenance is None:
        return None
    envelope, statement = read_envelope(path, head)
    return Evidence(statement, envelope_signatures(envelope, trust), read_bundle_sbom(path, f, contents))
