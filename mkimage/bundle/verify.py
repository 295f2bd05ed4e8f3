"""Verify and inspect bundles: structure, digests, signatures, rollback state.

Signatures are checked over the manifest bytes exactly as read from the archive; the
manifest is never re-serialised for verification.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import functools
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from mkimage.bundle.attestations import Evidence, check_provenance, check_sbom, read_evidence
from mkimage.bundle.container import BundleContents, BundleHead, HeadCheck, iter_component, read_bundle
from mkimage.bundle.manifest import Manifest, Role, Signature, version_key
from mkimage.bundle.roles import check_content_types, check_roles
from mkimage.errors import FormatError, InputError, MkspawnError, RollbackError, VerifyError
from mkimage.outputs import write_atomic
from mkimage.signing.keys import verify_bytes
from mkimage.signing.trust import TrustStore

if TYPE_CHECKING:
    from mkimage.handover.binding import Handover

STATE_TYPE = "mkspawn-rollback-state"
MAX_CMDLINE_SHOWN = 4096
MAX_STATE_BYTES = 1 << 20


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
    evidence: Evidence | None = None  # the provenance and SBOM, when the bundle carries them

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
            "evidence": None if self.evidence is None else self.evidence.to_dict(),
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


_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO or pipe"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: Path, what: str) -> BinaryIO:
    """``path`` opened for reading, refused (InputError) unless it is a seekable regular file.

    Opened non-blocking first, so a FIFO without a writer is refused instead of hanging.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        code = "no-such-file" if e.errno == errno.ENOENT else "unreadable-input"
        raise InputError(f"{path}: cannot open {what}: {e.strerror}", code=code) from None
    try:
        mode = os.fstat(fd).st_mode
        kind = next((name for test, name in _FILE_KINDS if test(mode)), None)
        if kind is not None or not stat.S_ISREG(mode):
            raise InputError(f"{path}: {what} is {kind or 'not a regular file'}, expected a regular file",
                             code="not-a-regular-file")
        try:
            os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, 0, os.SEEK_SET)
        except OSError as e:
            # /proc and similar pseudo-files: regular by type, but no length to check against.
            raise InputError(f"{path}: {what} is not seekable ({e.strerror}), expected a regular file",
                             code="not-a-regular-file") from None
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def opened_bundle(path: Path, check_head: HeadCheck | None = None, *,
                  read: Callable[[BinaryIO, HeadCheck | None], BundleContents] = read_bundle,
                  ) -> Iterator[tuple[BinaryIO, BundleContents]]:
    """The open file and its structurally verified contents; errors name the file.

    ``check_head`` runs before any component is hashed (see ``read_bundle``); ``read`` is
    ``read_layout`` only for a push, where the registry checks each component's digest.
    """
    with open_regular(path, "bundle") as f:
        try:
            contents = read(f, check_head)
        except FormatError as e:
            raise VerifyError(f"{path}: {e.message}", code=e.code) from None
        except OSError as e:
            raise InputError(f"{path}: cannot read bundle: {e.strerror}", code="unreadable-input") from None
        yield f, contents


def check_signature(raw_sig: Signature, manifest_bytes: bytes, trust: TrustStore) -> SignatureReport:
    trusted = trust.get(raw_sig.keyid)
    if trusted is None:
        return SignatureReport(raw_sig.keyid, str(raw_sig.scheme), SigStatus.UNTRUSTED, None)
    ok = verify_bytes(trusted.key, str(raw_sig.scheme), manifest_bytes, raw_sig.sig_bytes)
    status = SigStatus.TRUSTED if ok else SigStatus.INVALID
    return SignatureReport(raw_sig.keyid, str(raw_sig.scheme), status, str(trusted.source))


def check_signatures(head: BundleHead, trust: TrustStore) -> tuple[SignatureReport, ...]:
    return tuple(check_signature(s, head.manifest_bytes, trust) for _, s in head.signatures)


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
    # Only for a bundle that carries one: the decoder brings the devicetree modules.
    from mkimage.handover.binding import decode_handover

    try:
        return decode_handover(data)
    except MkspawnError as e:
        raise VerifyError(f"{path}: handover.dtb: {e.message}", code=e.code) from None


def _report(path: Path, f: BinaryIO, contents: BundleContents, sigs: tuple[SignatureReport, ...],
            evidence: Evidence | None = None) -> BundleReport:
    size = os.fstat(f.fileno()).st_size
    return BundleReport(path, size, contents.manifest, sigs, _cmdline(f, contents), _handover(f, contents, path),
                        evidence)


def inspect_bundle(path: Path, trust: TrustStore) -> BundleReport:
    """Structure and digests are checked; signatures are reported, not required."""
    with opened_bundle(path) as (f, contents):
        sigs = check_signatures(BundleHead(contents.manifest_bytes, contents.manifest, contents.signatures), trust)
        return _report(path, f, contents, sigs, read_evidence(path, f, contents, trust))


def require_trusted(path: Path, sigs: tuple[SignatureReport, ...], trust: TrustStore) -> None:
    """At least one valid signature by a trusted key and no invalid one claiming a trusted key."""
    if not sigs:
        raise VerifyError(f"{path}: bundle is not signed", code="unsigned")
    for sig in sigs:
        if sig.status is SigStatus.INVALID:
            raise VerifyError(
                f"{path}: signature by trusted key {sig.keyid[:16]}… does not verify over the manifest "
                "(tampered manifest or wrong key)",
                code="bad-signature",
            )
    if not any(s.status is SigStatus.TRUSTED for s in sigs):
        ids = ", ".join(s.keyid[:16] + "…" for s in sigs)
        where = f"trust store {trust.directory}" if trust.directory else "the trust store"
        raise VerifyError(f"{path}: signed only by untrusted key(s) {ids}; {where} has {len(trust.keys)} key(s)",
                          code="untrusted-key")


# Opens the bundle for verify_bundle: calls the head check before any component byte is
# read, and yields the file with contents whose component digests were all checked
# (``opened_bundle``; a pull instead checks the head from the registry's config and
# signature blobs, then writes the bundle hashing each component as it streams).
Opener = Callable[[HeadCheck], contextlib.AbstractContextManager[tuple[BinaryIO, BundleContents]]]


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a pulled bundle came from, recorded in the state file with its version."""

    reference: str
    digest: str  # of the OCI manifest: tags move, digests do not


def verify_bundle(path: Path, trust: TrustStore, *, state_file: Path | None = None, opener: Opener | None = None,
                  origin: Origin | None = None) -> BundleReport:
    """Accept only a structurally valid bundle with a valid signature by a trusted key,
    no invalid signature claiming a trusted key, components whose roles and media types
    agree with their bytes, and no version rollback.

    Signatures and role rules are checked before any component is hashed, and the state
    file is checked (readable, writable) before the bundle is read at all.
    """
    if state_file is not None:
        _read_state(state_file)
        _probe_writable(state_file)
    sigs: list[SignatureReport] = []
    provenance = []

    def check_head(head: BundleHead) -> None:
        sigs.extend(check_signatures(head, trust))
        require_trusted(path, tuple(sigs), trust)
        check_roles(path, head.manifest)
        provenance.append(check_provenance(path, head, trust))

    with (opener or functools.partial(opened_bundle, path))(check_head) as (f, contents):
        check_content_types(path, f, contents)
        sbom = check_sbom(path, f, contents)
        statement, statuses = provenance[0]
        report = _report(path, f, contents, tuple(sigs), Evidence(statement, statuses, sbom))
    if state_file is not None:
        _check_rollback(path, report.manifest, state_file, origin)
    return report


# ---- rollback protection --------------------------------------------------------

def _read_state(state_file: Path) -> dict[str, str]:
    """The recorded versions; a damaged state file is the operator's input error (exit 2)."""
    return _read_state_doc(state_file)[0]


def _read_state_doc(state_file: Path) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """The recorded versions, and the ``pulled`` table (newer than the first format, so
    optional): per recipe, the version, reference and OCI manifest digest of the last
    accepted pull."""
    if not os.path.lexists(state_file):
        return {}, {}
    with open_regular(state_file, "rollback state") as f:
        try:
            data = json.loads(f.read(MAX_STATE_BYTES + 1).decode("utf-8"))
        except OSError as e:
            raise InputError(f"{state_file}: cannot read rollback state: {e.strerror}", code="bad-state") from None
        except ValueError as e:
            raise InputError(f"{state_file}: rollback state is not JSON: {e}", code="bad-state") from None
    recipes = data.get("recipes") if isinstance(data, dict) and data.get("_type") == STATE_TYPE else None
    if not isinstance(recipes, dict) or not all(isinstance(v, str) for v in recipes.values()):
        raise InputError(f"{state_file}: not a mkspawn rollback state file", code="bad-state")
    for name, version in recipes.items():
        try:
            version_key(version)
        except ValueError as e:
            raise InputError(f"{state_file}: recorded version of {name!r}: {e}", code="bad-state") from None
    pulled = data.get("pulled", {})
    if not isinstance(pulled, dict) or not all(
            isinstance(v, dict) and set(v) == {"version", "reference", "digest"}
            and all(isinstance(x, str) for x in v.values()) for v in pulled.values()):
        raise InputError(f"{state_file}: pulled: expected {{recipe: {{version, reference, digest}}}}",
                         code="bad-state")
    return dict(recipes), dict(pulled)


def _probe_writable(state_file: Path) -> None:
    """Fail before verifying when the state could not be recorded afterwards: create and
    remove a temp file where ``write_atomic`` will create its own."""
    parent = state_file.absolute().parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent  # write_atomic creates the missing directories
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{state_file.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(f"{state_file}: rollback state cannot be written in {parent}: {e.strerror}",
                         code="state-not-writable") from None


def refuse_rollback(path: Path, manifest: Manifest, state_file: Path) -> None:
    """RollbackError if the state records a newer version of this recipe (nothing written)."""
    seen = _read_state(state_file).get(manifest.recipe_name)
    if seen is not None and version_key(manifest.recipe_version) < version_key(seen):
        raise RollbackError(
            f"{path}: {manifest.recipe_name} version {manifest.recipe_version} is older than the "
            f"verified {seen} recorded in {state_file}",
        )


def _check_rollback(path: Path, manifest: Manifest, state_file: Path, origin: Origin | None = None) -> None:
    refuse_rollback(path, manifest, state_file)
    recipes, pulled = _read_state_doc(state_file)
    name, version = manifest.recipe_name, manifest.recipe_version
    changed = name not in recipes or version_key(version) > version_key(recipes[name])
    if changed:
        recipes[name] = version
    if origin is not None:
        entry = {"version": version, "reference": origin.reference, "digest": origin.digest}
        changed = changed or pulled.get(name) != entry
        pulled[name] = entry
    if changed:
        _write_state(state_file, recipes, pulled)


def _write_state(state_file: Path, recipes: Mapping[str, str],
                 pulled: Mapping[str, Mapping[str, str]] | None = None) -> None:
    body: dict[str, object] = {"_type": STATE_TYPE, "recipes": dict(sorted(recipes.items()))}
    if pulled:
        body["pulled"] = dict(sorted(pulled.items()))
    try:
        write_atomic(state_file, (json.dumps(body, indent=2) + "\n").encode())
    except OSError as e:
        # The probe passed, yet the rename failed (an immutable file, a full disk): the
        # bundle verified but its version is not recorded, so it is not accepted either.
        raise InputError(f"{state_file}: cannot record the verified version: {e.strerror}",
                         code="state-not-writable") from None
