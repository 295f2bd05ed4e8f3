"""Verify and inspect bundles: structure, digests, signatures, rollback state.

Signatures are checked over the manifest bytes exactly as read from the archive; the
manifest is never re-serialised for verification.
"""

from __future__ import annotations

import contextlib
import enum
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mkimage.bundle.container import BundleContents, iter_component, read_bundle
from mkimage.bundle.manifest import Manifest, Role, Signature, version_key
from mkimage.errors import FormatError, InputError, MkspawnError, RollbackError, VerifyError
from mkimage.handover.binding import Handover, decode_handover
from mkimage.outputs import write_atomic
from mkimage.signing.keys import verify_bytes
from mkimage.signing.trust import TrustStore

STATE_TYPE = "mkspawn-rollback-state"
MAX_CMDLINE_SHOWN = 4096


class SigStatus(enum.StrEnum):
    TRUSTED = "trusted"  # valid, by a key in the trust store
    UNTRUSTED = "untrusted"  # key not in the trust store: cannot be checked
    INVALID = "invalid"  # by a trusted key id, but does not verify


@dataclass(frozen=True, slots=True)
class SignatureReport:
    keyid: str
    scheme: str
    status: SigStatus
    trusted_source: str | None


@dataclass(frozen=True, slots=True)
class BundleReport:
    path: Path
    size: int
    manifest: Manifest
    signatures: tuple[SignatureReport, ...]
    cmdline: str
    handover: Handover | None = None

    @property
    def trusted_by(self) -> tuple[str, ...]:
        return tuple(s.keyid for s in self.signatures if s.status is SigStatus.TRUSTED)

    def to_dict(self) -> dict[str, object]:
        m = self.manifest
        return {
            "bundle": str(self.path),
            "size": self.size,
            "format_version": m.format_version,
            "recipe": {"name": m.recipe_name, "version": m.recipe_version},
            "arch": str(m.arch),
            "abi_profile": str(m.abi_profile),
            "kernel_release": m.kernel_release,
            "cmdline": self.cmdline,
            "components": [c.to_dict() for c in m.components],
            "signatures": [
                {"keyid": s.keyid, "scheme": s.scheme, "status": str(s.status), "trusted_key": s.trusted_source}
                for s in self.signatures
            ],
            "provenance": m.provenance.to_dict(),
            "instance": _instance_dict(self.handover),
        }


def _instance_dict(handover: Handover | None) -> dict[str, object] | None:
    if handover is None or handover.instance is None:
        return None
    inst = handover.instance
    return {
        "name": inst.name,
        "id": inst.id,
        "cpus": list(inst.cpus),
        "memory_bytes": inst.memory_bytes,
        "numa_nodes": list(inst.numa_nodes),
        "preserve": [{"name": n, "size_bytes": size} for n, size in handover.preserve],
    }


@contextlib.contextmanager
def opened_bundle(path: Path) -> Iterator[tuple[BinaryIO, BundleContents]]:
    """The open file and its structurally verified contents; errors name the file."""
    try:
        f = path.open("rb")
    except OSError as e:
        raise InputError(f"{path}: cannot open bundle: {e.strerror}", code="no-such-file") from None
    with f:
        try:
            contents = read_bundle(f)
        except FormatError as e:
            raise VerifyError(f"{path}: {e.message}", code=e.code) from None
        yield f, contents


def _check_signature(raw_sig: Signature, manifest_bytes: bytes, trust: TrustStore) -> SignatureReport:
    trusted = trust.get(raw_sig.keyid)
    if trusted is None:
        return SignatureReport(raw_sig.keyid, str(raw_sig.scheme), SigStatus.UNTRUSTED, None)
    ok = verify_bytes(trusted.key, str(raw_sig.scheme), manifest_bytes, raw_sig.sig_bytes)
    status = SigStatus.TRUSTED if ok else SigStatus.INVALID
    return SignatureReport(raw_sig.keyid, str(raw_sig.scheme), status, str(trusted.source))


def _member(f: BinaryIO, contents: BundleContents, role: Role) -> bytes | None:
    for component in contents.manifest.components:
        if component.role is role:
            return b"".join(iter_component(f, contents, component.path))
    return None


def _cmdline(f: BinaryIO, contents: BundleContents) -> str:
    data = _member(f, contents, Role.CMDLINE) or b""
    return data[:MAX_CMDLINE_SHOWN].decode("utf-8", "replace")


def _handover(f: BinaryIO, contents: BundleContents, path: Path) -> Handover | None:
    data = _member(f, contents, Role.HANDOVER)
    if data is None:
        return None
    try:
        return decode_handover(data)
    except MkspawnError as e:
        raise VerifyError(f"{path}: handover.dtb: {e.message}", code=e.code) from None


def inspect_bundle(path: Path, trust: TrustStore) -> BundleReport:
    """Structure and digests are checked; signatures are reported, not required."""
    with opened_bundle(path) as (f, contents):
        sigs = tuple(_check_signature(s, contents.manifest_bytes, trust) for _, s in contents.signatures)
        cmdline = _cmdline(f, contents)
        handover = _handover(f, contents, path)
    return BundleReport(path, path.stat().st_size, contents.manifest, sigs, cmdline, handover)


def verify_bundle(path: Path, trust: TrustStore, *, state_file: Path | None = None) -> BundleReport:
    """Accept only a structurally valid bundle with a valid signature by a trusted key,
    no invalid signature claiming a trusted key, and no version rollback."""
    report = inspect_bundle(path, trust)
    if not report.signatures:
        raise VerifyError(f"{path}: bundle is not signed", code="unsigned")
    for sig in report.signatures:
        if sig.status is SigStatus.INVALID:
            raise VerifyError(
                f"{path}: signature by trusted key {sig.keyid[:16]}… does not verify over the manifest "
                "(tampered manifest or wrong key)",
                code="bad-signature",
            )
    if not report.trusted_by:
        ids = ", ".join(s.keyid[:16] + "…" for s in report.signatures)
        where = f"trust store {trust.directory}" if trust.directory else "the trust store"
        raise VerifyError(f"{path}: signed only by untrusted key(s) {ids}; {where} has {len(trust.keys)} key(s)",
                          code="untrusted-key")
    if state_file is not None:
        _check_rollback(path, report.manifest, state_file)
    return report


# ---- rollback protection --------------------------------------------------------

def _read_state(state_file: Path) -> dict[str, str]:
    if not state_file.exists():
        return {}
    try:
        data = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(f"{state_file}: unreadable rollback state: {e}", code="bad-state") from None
    recipes = data.get("recipes") if isinstance(data, dict) and data.get("_type") == STATE_TYPE else None
    if not isinstance(recipes, dict) or not all(isinstance(v, str) for v in recipes.values()):
        raise InputError(f"{state_file}: not a mkspawn rollback state file", code="bad-state")
    return dict(recipes)


def _check_rollback(path: Path, manifest: Manifest, state_file: Path) -> None:
    recipes = _read_state(state_file)
    seen = recipes.get(manifest.recipe_name)
    if seen is not None and version_key(manifest.recipe_version) < version_key(seen):
        raise RollbackError(
            f"{path}: {manifest.recipe_name} version {manifest.recipe_version} is older than the "
            f"verified {seen} recorded in {state_file}",
        )
    if seen is None or version_key(manifest.recipe_version) > version_key(seen):
        recipes[manifest.recipe_name] = manifest.recipe_version
        _write_state(state_file, recipes)


def _write_state(state_file: Path, recipes: Mapping[str, str]) -> None:
    body = {"_type": STATE_TYPE, "recipes": dict(sorted(recipes.items()))}
    write_atomic(state_file, (json.dumps(body, indent=2) + "\n").encode())
