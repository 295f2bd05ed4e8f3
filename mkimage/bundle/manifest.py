"""The bundle manifest and its detached signatures, one strict class per document.

As in python-tuf, constructors enforce invariants (ValueError), ``from_dict`` accepts
exactly the known fields with exactly the right JSON types (FormatError naming the field
path, "observed X, expected Y"), and ``to_dict`` is its inverse.  What gets signed is the
manifest's canonical bytes; a reader must keep the bytes it read rather than re-encode.
"""

from __future__ import annotations

import enum
import itertools
import re
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from mkimage.artifacts import Role
from mkimage.bundle.canon import (
    JsonObject,
    JsonValue,
    canonical_json,
    expect_object,
    expect_str,
    parse_canonical,
    reject_unknown,
    take_enum,
    take_int,
    take_list,
    take_object,
    take_str,
    take_type_tag,
)
from mkimage.bundle.tarball import MAX_MTIME, MAX_SIZE, name_problem
from mkimage.errors import FormatError

# The recipe owns these choices; the manifest records them, so it re-exports the same enums.
from mkimage.recipe.targets import AbiProfile, Arch
from mkimage.signing.keys import Scheme as SignatureScheme

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_MEMBER",
    "PROVENANCE_MEMBER",
    "SIGNATURE_DIR",
    "AbiProfile",
    "Arch",
    "Component",
    "Input",
    "InputKind",
    "Manifest",
    "Provenance",
    "Role",
    "Signature",
    "SignatureScheme",
    "version_key",
]

FORMAT_VERSION = 1
MANIFEST_MEMBER = "manifest.json"
SIGNATURE_DIR = "signatures/"
# The DSSE provenance envelope sits beside the manifest like a signature (its subjects
# include the manifest's digest, so the manifest cannot list it as a component).
PROVENANCE_MEMBER = "provenance.dsse.json"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")
# RFC 6838 restricted names, lower-cased so that one media type has one spelling.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9.+-]*/[a-z0-9][a-z0-9.+-]*")
_RECIPE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# No leading zeros: "1.02" and "1.2" would otherwise be two spellings of one version.
_VERSION = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
# utsname.release is 65 bytes including its NUL.
_KERNEL_RELEASE = re.compile(r"[!-~]{1,64}")


class InputKind(enum.StrEnum):
    SOURCE = "source"
    PATCH = "patch"
    PREBUILT = "prebuilt"
    CONFIG_BASE = "config-base"
    CONFIG_FRAGMENT = "config-fragment"
    TRUSTED_KEYS = "trusted-keys"
    RECIPE = "recipe"
    FILE = "file"


def version_key(version: str) -> tuple[int, ...]:
    """Order key for a dotted recipe version: "1.10" sorts after "1.9"."""
    if not _VERSION.fullmatch(version):
        raise ValueError(f"observed {version!r}, expected dotted integers like '1.2.3'")
    return tuple(int(part) for part in version.split("."))


@dataclass(frozen=True, slots=True)
class Component:
    """One file in the bundle, bound to the manifest by size and sha256."""

    role: Role
    path: str
    size: int
    sha256: str
    media_type: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "role", _as_enum("role", self.role, Role))
        problem = name_problem(self.path)
        if problem is not None:
            raise ValueError(f"path: {self.path!r} {problem[1]}")
        if self.path in (MANIFEST_MEMBER, PROVENANCE_MEMBER) or self.path.startswith(SIGNATURE_DIR):
            raise ValueError(f"path: {self.path!r} is reserved for the bundle's own members")
        _check_int("size", self.size, MAX_SIZE)
        _check_hex64("sha256", self.sha256)
        if not _MEDIA_TYPE.fullmatch(self.media_type):
            raise ValueError(
                f"media_type: observed {self.media_type!r}, expected lowercase 'type/subtype'"
            )

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, where: str = "") -> Component:
        d = dict(data)
        role = take_enum(d, "role", Role, where)
        path = take_str(d, "path", where)
        size = take_int(d, "size", where)
        sha256 = take_str(d, "sha256", where)
        media_type = take_str(d, "media_type", where)
        reject_unknown(d, where)
        return construct_checked(
            lambda: cls(role=role, path=path, size=size, sha256=sha256, media_type=media_type),
            where,
        )

    def to_dict(self) -> JsonObject:
        return {
            "role": self.role.value,
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "media_type": self.media_type,
        }


@dataclass(frozen=True, slots=True)
class Input:
    """Something the build consumed, pinned by digest."""

    kind: InputKind
    name: str
    sha256: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", _as_enum("kind", self.kind, InputKind))
        _check_nonempty("name", self.name)
        _check_hex64("sha256", self.sha256)

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, where: str = "") -> Input:
        d = dict(data)
        kind = take_enum(d, "kind", InputKind, where)
        name = take_str(d, "name", where)
        sha256 = take_str(d, "sha256", where)
        reject_unknown(d, where)
        return construct_checked(lambda: cls(kind=kind, name=name, sha256=sha256), where)

    def to_dict(self) -> JsonObject:
        return {"kind": self.kind.value, "name": self.name, "sha256": self.sha256}


@dataclass(frozen=True, slots=True)
class Provenance:
    """How the bundle was made; enough to rebuild it bit for bit."""

    source_date_epoch: int
    mkspawn_version: str
    tools: Mapping[str, str]
    inputs: tuple[Input, ...]
    config_sha256: str  # "" when the bundle carries no kernel config

    def __post_init__(self) -> None:
        # The tar mtime field caps the epoch, and every member's mtime is this value.
        _check_int("source_date_epoch", self.source_date_epoch, MAX_MTIME)
        _check_nonempty("mkspawn_version", self.mkspawn_version)
        for tool, version in self.tools.items():
            _check_nonempty("tools key", tool)
            _check_nonempty(f"tools.{tool}", version)
        # A read-only copy: the dataclass is frozen, so its mapping must not change either.
        object.__setattr__(self, "tools", types.MappingProxyType(dict(sorted(self.tools.items()))))
        if self.config_sha256 != "":
            _check_hex64("config_sha256", self.config_sha256)

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, where: str = "") -> Provenance:
        d = dict(data)
        source_date_epoch = take_int(d, "source_date_epoch", where)
        mkspawn_version = take_str(d, "mkspawn_version", where)
        raw_tools = take_object(d, "tools", where)
        tools = {key: expect_str(value, f"{where}tools.{key}") for key, value in raw_tools.items()}
        inputs = tuple(
            Input.from_dict(
                expect_object(item, f"{where}inputs[{i}]"), where=f"{where}inputs[{i}]."
            )
            for i, item in enumerate(take_list(d, "inputs", where))
        )
        config_sha256 = take_str(d, "config_sha256", where)
        reject_unknown(d, where)
        return construct_checked(
            lambda: cls(
                source_date_epoch=source_date_epoch,
                mkspawn_version=mkspawn_version,
                tools=tools,
                inputs=inputs,
                config_sha256=config_sha256,
            ),
            where,
        )

    def to_dict(self) -> JsonObject:
        tools: JsonObject = dict(self.tools)
        inputs: list[JsonValue] = [item.to_dict() for item in self.inputs]
        return {
            "source_date_epoch": self.source_date_epoch,
            "mkspawn_version": self.mkspawn_version,
            "tools": tools,
            "inputs": inputs,
            "config_sha256": self.config_sha256,
        }


@dataclass(frozen=True, slots=True)
class Manifest:
    """The signed description of a bundle: what it boots and what it was built from."""

    TYPE: ClassVar[str] = "mkspawn-manifest"

    format_version: int
    recipe_name: str
    recipe_version: str
    arch: Arch
    abi_profile: AbiProfile
    kernel_release: str
    components: tuple[Component, ...]
    provenance: Provenance

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(
                f"format_version: observed {self.format_version!r}, expected {FORMAT_VERSION}"
            )
        if not _RECIPE_NAME.fullmatch(self.recipe_name):
            raise ValueError(
                f"recipe_name: observed {self.recipe_name!r}, expected [A-Za-z0-9][A-Za-z0-9._-]*"
            )
        try:
            version_key(self.recipe_version)
        except ValueError as e:
            raise ValueError(f"recipe_version: {e}") from e
        object.__setattr__(self, "arch", _as_enum("arch", self.arch, Arch))
        object.__setattr__(self, "abi_profile", _as_enum("abi_profile", self.abi_profile, AbiProfile))
        if not _KERNEL_RELEASE.fullmatch(self.kernel_release):
            raise ValueError(
                f"kernel_release: observed {self.kernel_release!r}, expected 1-64 printable "
                "ASCII characters without spaces"
            )
        paths = [component.path for component in self.components]
        # Canonical order is what the archive follows, so a reader can check in one pass.
        for earlier, later in itertools.pairwise(paths):
            if earlier >= later:
                problem = "appears twice" if earlier == later else f"sorts after {later!r}"
                raise ValueError(f"components: path {earlier!r} {problem}")

    @classmethod
    def build(
        cls,
        *,
        recipe_name: str,
        recipe_version: str,
        arch: Arch,
        abi_profile: AbiProfile,
        kernel_release: str,
        components: Iterable[Component],
        provenance: Provenance,
    ) -> Manifest:
        """A current-version manifest with its components put in canonical order."""
        return cls(
            format_version=FORMAT_VERSION,
            recipe_name=recipe_name,
            recipe_version=recipe_version,
            arch=arch,
            abi_profile=abi_profile,
            kernel_release=kernel_release,
            components=tuple(sorted(components, key=lambda c: c.path)),
            provenance=provenance,
        )

    def component(self, path: str) -> Component | None:
        return next((c for c in self.components if c.path == path), None)

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, where: str = "") -> Manifest:
        d = dict(data)
        take_type_tag(d, cls.TYPE, where)
        # Checked before anything else: a newer format may add fields, and "unknown
        # format version" is the message that tells the user what to do.
        format_version = take_int(d, "format_version", where)
        if format_version != FORMAT_VERSION:
            raise FormatError(
                f"{where}format_version: observed {format_version}, expected {FORMAT_VERSION}",
                code="unknown-format-version",
            )
        recipe_name = take_str(d, "recipe_name", where)
        recipe_version = take_str(d, "recipe_version", where)
        arch = take_enum(d, "arch", Arch, where)
        abi_profile = take_enum(d, "abi_profile", AbiProfile, where)
        kernel_release = take_str(d, "kernel_release", where)
        components = tuple(
            Component.from_dict(
                expect_object(item, f"{where}components[{i}]"), where=f"{where}components[{i}]."
            )
            for i, item in enumerate(take_list(d, "components", where))
        )
        provenance = Provenance.from_dict(
            take_object(d, "provenance", where), where=f"{where}provenance."
        )
        reject_unknown(d, where)
        return construct_checked(
            lambda: cls(
                format_version=format_version,
                recipe_name=recipe_name,
                recipe_version=recipe_version,
                arch=arch,
                abi_profile=abi_profile,
                kernel_release=kernel_release,
                components=components,
                provenance=provenance,
            ),
            where,
        )

    def to_dict(self) -> JsonObject:
        components: list[JsonValue] = [c.to_dict() for c in self.components]
        return {
            "_type": self.TYPE,
            "format_version": self.format_version,
            "recipe_name": self.recipe_name,
            "recipe_version": self.recipe_version,
            "arch": self.arch.value,
            "abi_profile": self.abi_profile.value,
            "kernel_release": self.kernel_release,
            "components": components,
            "provenance": self.provenance.to_dict(),
        }

    def to_bytes(self) -> bytes:
        """The canonical bytes; sign these, and verify the bytes as read, never these."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes, *, base_offset: int = 0) -> Manifest:
        return cls.from_dict(parse_canonical(data, MANIFEST_MEMBER, base_offset=base_offset))


@dataclass(frozen=True, slots=True)
class Signature:
    """One key's signature over the manifest bytes, stored as its own bundle member."""

    TYPE: ClassVar[str] = "mkspawn-signature"

    keyid: str
    scheme: SignatureScheme
    sig: str  # lowercase hex of the raw signature

    def __post_init__(self) -> None:
        _check_hex64("keyid", self.keyid)
        object.__setattr__(self, "scheme", _as_enum("scheme", self.scheme, SignatureScheme))
        if not _HEX.fullmatch(self.sig):
            raise ValueError("sig: expected a non-empty even number of lowercase hex digits")

    @property
    def member_name(self) -> str:
        return f"{SIGNATURE_DIR}{self.keyid}.sig"

    @property
    def sig_bytes(self) -> bytes:
        return bytes.fromhex(self.sig)

    @classmethod
    def from_dict(cls, data: Mapping[str, object], *, where: str = "") -> Signature:
        d = dict(data)
        take_type_tag(d, cls.TYPE, where)
        keyid = take_str(d, "keyid", where)
        scheme = take_enum(d, "scheme", SignatureScheme, where)
        sig = take_str(d, "sig", where)
        reject_unknown(d, where)
        return construct_checked(lambda: cls(keyid=keyid, scheme=scheme, sig=sig), where)

    def to_dict(self) -> JsonObject:
        return {
            "_type": self.TYPE,
            "keyid": self.keyid,
            "scheme": self.scheme.value,
            "sig": self.sig,
        }

    def to_bytes(self) -> bytes:
        return canonical_json(self.to_dict())

    @classmethod
    def from_bytes(cls, data: bytes, *, what: str = "signature", base_offset: int = 0) -> Signature:
        return cls.from_dict(parse_canonical(data, what, base_offset=base_offset))


# Constructor checks: ValueError naming the field, turned into FormatError by from_dict.

_T = TypeVar("_T")
_E = TypeVar("_E", bound=enum.StrEnum)


def _as_enum(field: str, value: object, enum_type: type[_E]) -> _E:
    # Equal-valued members of another enum (the recipe's) or plain strings are normalised
    # here, so the stored field is always this module's member and to_dict is exact.
    choices = ", ".join(member.value for member in enum_type)
    if not isinstance(value, str):
        raise TypeError(f"{field}: observed {value!r}, expected one of {choices}")
    try:
        return enum_type(value)
    except ValueError as e:
        raise ValueError(f"{field}: observed {value!r}, expected one of {choices}") from e


def _check_int(field: str, value: int, maximum: int) -> None:
    if isinstance(value, bool) or not 0 <= value <= maximum:
        raise ValueError(f"{field}: observed {value!r}, expected an integer in 0..{maximum}")


def _check_hex64(field: str, value: str) -> None:
    if not _HEX64.fullmatch(value):
        raise ValueError(f"{field}: observed {value!r}, expected 64 lowercase hex digits")


def _check_nonempty(field: str, value: str) -> None:
    if not value:
        raise ValueError(f"{field}: observed an empty string, expected a non-empty one")


def construct_checked(make: Callable[[], _T], where: str) -> _T:
    try:
        return make()
    except ValueError as e:
        raise FormatError(f"{where}{e}", code="bad-field") from e
