"""The system manifest: one host's pool baseline and its spawns' bundles, in load order.

A system directory holds ``system.json`` (this document's canonical bytes),
``signatures/<keyid>.sig`` (the bundle's Signature documents, over those bytes), the pool
baseline DTB and one bundle per spawn, each named by size and sha256.  As with the bundle
manifest, ``from_dict`` is strict, ``to_dict`` its inverse, constructors enforce the
invariants, and a verifier checks the bytes it read, never a re-encoding.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from mkimage.bundle.canon import (
    JsonObject,
    JsonValue,
    canonical_json,
    expect_object,
    parse_canonical,
    reject_unknown,
    take_enum,
    take_int,
    take_list,
    take_object,
    take_str,
    take_type_tag,
)
from mkimage.bundle.manifest import AbiProfile, Signature, construct_checked, version_key
from mkimage.bundle.tarball import MAX_SIZE, name_problem
from mkimage.bundle.verify import SignatureReport, check_signature
from mkimage.errors import FormatError
from mkimage.signing.trust import TrustStore

SYSTEM_FORMAT_VERSION = 1
SYSTEM_MANIFEST = "system.json"
SYSTEM_SIGNATURE_DIR = "signatures"
MAX_SYSTEM_MANIFEST_BYTES = 1 << 20


def is_system_target(path: Path) -> bool:
    """A system directory, or a system manifest file.  Here, not in mkimage/system.py,
    so that `verify` and `inspect` of a bundle can ask without importing the build side."""
    return path.is_dir() or path.name == SYSTEM_MANIFEST
# KEXEC_MK_ID is 11 bits (multikernel-abi.md §3).
MK_ID_MAX = 2047


@dataclass(frozen=True, slots=True)
class FileRef:
    """A file of the system directory, bound by size and sha256."""

    path: str
    size: int
    sha256: str

    def __post_init__(self) -> None:
        problem = name_problem(self.path)
        if problem is not None:
            raise ValueError(f"path: {self.path!r} {problem[1]}")
        if self.path == SYSTEM_MANIFEST or self.path.split("/")[0] == SYSTEM_SIGNATURE_DIR:
            raise ValueError(f"path: {self.path!r} is reserved for the manifest and its signatures")
        if isinstance(self.size, bool) or not 0 <= self.size <= MAX_SIZE:
            raise ValueError(f"size: observed {self.size!r}, expected an integer in 0..{MAX_SIZE}")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"sha256: observed {self.sha256!r}, expected 64 lowercase hex digits")

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, where: str) -> FileRef:
        d = dict(data)
        path, size, sha256 = take_str(d, "path", where), take_int(d, "size", where), take_str(d, "sha256", where)
        reject_unknown(d, where)
        return construct_checked(lambda: cls(path, size, sha256), where)

    def to_dict(self) -> JsonObject:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


def _ints(d: dict[str, object], key: str, where: str) -> tuple[int, ...]:
    values = []
    for i, item in enumerate(take_list(d, key, where)):
        if isinstance(item, bool) or not isinstance(item, int):
            raise FormatError(f"{where}{key}[{i}]: expected an integer", code="bad-field")
        values.append(item)
    return tuple(values)


@dataclass(frozen=True, slots=True)
class SpawnEntry:
    """One spawn: the instance it runs as and the bundle that carries it."""

    instance: str
    id: int
    recipe_name: str
    recipe_version: str
    kernel_release: str
    cpus: tuple[int, ...]
    memory_bytes: int
    numa_nodes: tuple[int, ...]
    devices: tuple[str, ...]
    bundle: FileRef

    def __post_init__(self) -> None:
        if not self.instance:
            raise ValueError("instance: observed an empty string, expected a name")
        if isinstance(self.id, bool) or not 1 <= self.id <= MK_ID_MAX:
            raise ValueError(f"id: observed {self.id!r}, expected 1..{MK_ID_MAX}")
        try:
            version_key(self.recipe_version)
        except ValueError as e:
            raise ValueError(f"recipe_version: {e}") from e
        if not self.cpus or 0 in self.cpus or len(set(self.cpus)) != len(self.cpus):
            raise ValueError(f"cpus: observed {list(self.cpus)}, expected distinct non-zero APIC ids")
        if self.memory_bytes <= 0:
            raise ValueError(f"memory_bytes: observed {self.memory_bytes}, expected a positive size")

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, where: str) -> SpawnEntry:
        d = dict(data)
        fields = dict(
            instance=take_str(d, "instance", where), id=take_int(d, "id", where),
            recipe_name=take_str(d, "recipe_name", where), recipe_version=take_str(d, "recipe_version", where),
            kernel_release=take_str(d, "kernel_release", where), cpus=_ints(d, "cpus", where),
            memory_bytes=take_int(d, "memory_bytes", where), numa_nodes=_ints(d, "numa_nodes", where),
            devices=tuple(take_str({"v": v}, "v", f"{where}devices[{i}]")
                          for i, v in enumerate(take_list(d, "devices", where))),
            bundle=FileRef.from_dict(take_object(d, "bundle", where), where=f"{where}bundle."),
        )
        reject_unknown(d, where)
        return construct_checked(lambda: cls(**fields), where)  # type: ignore[arg-type]

    def to_dict(self) -> JsonObject:
        return {
            "instance": self.instance, "id": self.id, "recipe_name": self.recipe_name,
            "recipe_version": self.recipe_version, "kernel_release": self.kernel_release,
            "cpus": list(self.cpus), "memory_bytes": self.memory_bytes, "numa_nodes": list(self.numa_nodes),
            "devices": list(self.devices), "bundle": self.bundle.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class SystemManifest:
    """What a host applies: the pool baseline once, then each spawn in ``spawns`` order."""

    TYPE: ClassVar[str] = "mkspawn-system"

    format_version: int
    name: str
    version: str
    abi_profile: AbiProfile
    baseline: FileRef
    spawns: tuple[SpawnEntry, ...]

    def __post_init__(self) -> None:
        if self.format_version != SYSTEM_FORMAT_VERSION:
            raise ValueError(f"format_version: observed {self.format_version!r}, expected {SYSTEM_FORMAT_VERSION}")
        try:
            version_key(self.version)
        except ValueError as e:
            raise ValueError(f"version: {e}") from e
        if self.abi_profile is AbiProfile.NONE:
            raise ValueError("abi_profile: observed 'none', expected a multikernel profile")
        if not self.spawns:
            raise ValueError("spawns: observed none, expected at least one")
        columns: tuple[tuple[str, list[str]], ...] = (
            ("instance", [s.instance for s in self.spawns]), ("id", [str(s.id) for s in self.spawns]),
            ("bundle", [s.bundle.path for s in self.spawns] + [self.baseline.path]))
        for label, values in columns:
            if dup := next((v for v in values if values.count(v) > 1), None):
                raise ValueError(f"spawns: {label} {dup!r} appears twice")
        cpus = [c for s in self.spawns for c in s.cpus]
        if dup_cpu := next((c for c in cpus if cpus.count(c) > 1), None):
            raise ValueError(f"spawns: APIC id {dup_cpu} is given to two instances")

    @classmethod
    def build(cls, *, name: str, version: str, abi_profile: AbiProfile, baseline: FileRef,
              spawns: Iterable[SpawnEntry]) -> SystemManifest:
        return cls(SYSTEM_FORMAT_VERSION, name, version, abi_profile, baseline, tuple(spawns))

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, where: str = "") -> SystemManifest:
        d = dict(data)
        take_type_tag(d, cls.TYPE, where)
        format_version = take_int(d, "format_version", where)
        if format_version != SYSTEM_FORMAT_VERSION:
            raise FormatError(f"{where}format_version: observed {format_version}, expected {SYSTEM_FORMAT_VERSION}",
                              code="unknown-format-version")
        name = take_str(d, "name", where)
        version = take_str(d, "version", where)
        abi_profile = take_enum(d, "abi_profile", AbiProfile, where)
        baseline = FileRef.from_dict(take_object(d, "baseline", where), where=f"{where}baseline.")
        spawns = tuple(SpawnEntry.from_dict(expect_object(item, f"{where}spawns[{i}]"), where=f"{where}spawns[{i}].")
                       for i, item in enumerate(take_list(d, "spawns", where)))
        reject_unknown(d, where)
        return construct_checked(lambda: cls(format_version, name, version, abi_profile, baseline, spawns), where)

    def to_dict(self) -> JsonObject:
        spawns: list[JsonValue] = [s.to_dict() for s in self.spawns]
        return {
            "_type": self.TYPE, "format_version": self.format_version, "name": self.name, "version": self.version,
            "abi_profile": self.abi_profile.value, "baseline": self.baseline.to_dict(), "spawns": spawns,
        }

    def to_bytes(self) -> bytes:
        """The canonical bytes; sign these, and verify the bytes as read, never these."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes) -> SystemManifest:
        return cls.from_dict(parse_canonical(data, SYSTEM_MANIFEST))


def signature_member(signature: Signature) -> str:
    return f"{SYSTEM_SIGNATURE_DIR}/{signature.keyid}.sig"


def check_system_signatures(manifest_bytes: bytes, signatures: Sequence[bytes],
                            trust: TrustStore) -> tuple[SignatureReport, ...]:
    """Each signature document checked over the manifest bytes as read (FormatError for
    one that does not decode)."""
    return tuple(check_signature(Signature.from_bytes(raw, what=f"signature {i}"), manifest_bytes, trust)
                 for i, raw in enumerate(signatures))
