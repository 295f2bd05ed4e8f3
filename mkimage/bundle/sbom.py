"""The bundle's SBOM: a CycloneDX 1.6 JSON document (member ``sbom.cdx.json``).

Made with cyclonedx-python-lib from facts the build collected, so security tools read
it like any other SBOM.  It lists the bundle's other components (the kernel with its
source, patches and resolved config; the initrd; trees, tables, hand-off), every input
the build consumed with its digest, and the Debian package each host file came from.

Deterministic: the serial number is a UUID derived from the facts' digest and the
timestamp is SOURCE_DATE_EPOCH, so the same inputs give the same bytes.  cyclonedx is
imported inside the functions that need it: verify and inspect read the SBOM as plain
JSON and must start fast.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mkimage.bundle.canon import canonical_json
from mkimage.errors import FormatError

if TYPE_CHECKING:
    from cyclonedx.model.component import Component as CdxComponent

SBOM_MEMBER = "sbom.cdx.json"
SBOM_MEDIA_TYPE = "application/vnd.cyclonedx+json"
SPEC_VERSION = "1.6"
# Serial numbers are name-based UUIDs in this namespace, named by the facts' digest.
SERIAL_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:mkspawn:sbom")
MAX_SBOM_BYTES = 16 << 20
KERNEL_REF = "kernel"
BUNDLE_REF = "bundle"


@dataclass(frozen=True, slots=True, order=True)
class DebPackage:
    """A Debian binary package as ``dpkg-query -W`` reports it."""

    name: str
    version: str
    arch: str

    @property
    def purl(self) -> str:
        # package-url percent-encodes the version: an epoch's ':' becomes %3A, '+' %2B.
        version = urllib.parse.quote(self.version, safe=".-_~")
        return f"pkg:deb/debian/{self.name}@{version}?arch={self.arch}"

    @property
    def ref(self) -> str:
        return f"deb:{self.name}:{self.arch}"


@dataclass(frozen=True, slots=True)
class SbomInput:
    """Something the build consumed: its provenance kind and name, digest, and package."""

    kind: str
    name: str
    sha256: str
    package: DebPackage | None = None

    @property
    def ref(self) -> str:
        return f"input:{self.kind}:{self.name}"


@dataclass(frozen=True, slots=True)
class SbomMember:
    """A bundle component the SBOM describes (every one but the SBOM itself)."""

    role: str
    path: str
    sha256: str
    media_type: str

    @property
    def ref(self) -> str:
        return KERNEL_REF if self.role == "kernel" else f"member:{self.path}"


@dataclass(frozen=True, slots=True)
class SbomFacts:
    recipe_name: str
    recipe_version: str
    kernel_release: str
    config_sha256: str  # "" without a kernel config
    source_date_epoch: int
    mkspawn_version: str
    members: tuple[SbomMember, ...]
    inputs: tuple[SbomInput, ...]

    def digest(self) -> str:
        packages = {i.ref: [i.package.name, i.package.version, i.package.arch] for i in self.inputs if i.package}
        body = {
            "recipe": [self.recipe_name, self.recipe_version, self.kernel_release, self.config_sha256,
                       self.source_date_epoch, self.mkspawn_version],
            "members": [[m.role, m.path, m.sha256, m.media_type] for m in self.members],
            "inputs": [[i.kind, i.name, i.sha256] for i in self.inputs],
            "packages": packages,
        }
        return hashlib.sha256(canonical_json(body)).hexdigest()


# Which kernel inputs describe the kernel itself rather than the initrd.
KERNEL_INPUT_KINDS = frozenset({"source", "patch", "config-base", "config-fragment", "trusted-keys"})


def make_sbom(facts: SbomFacts) -> bytes:
    """The CycloneDX 1.6 JSON bytes for ``facts``."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom, BomMetaData
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6

    def sha(value: str) -> list[HashType]:
        return [HashType(alg=HashAlgorithm.SHA_256, content=value)]

    def props(**values: str) -> list[Property]:
        return [Property(name=f"mkspawn:{k.replace('_', '-')}", value=v) for k, v in sorted(values.items()) if v]

    epoch = datetime.datetime.fromtimestamp(facts.source_date_epoch, datetime.UTC)
    bundle = Component(name=facts.recipe_name, version=facts.recipe_version, type=ComponentType.FIRMWARE,
                       bom_ref=BUNDLE_REF, properties=props(kernel_release=facts.kernel_release))
    tool = Component(name="mkspawn", version=facts.mkspawn_version, type=ComponentType.APPLICATION)
    meta = BomMetaData(timestamp=epoch, component=bundle)
    meta.tools.components.add(tool)
    bom = Bom(serial_number=uuid.uuid5(SERIAL_NAMESPACE, facts.digest()), metadata=meta)

    members: dict[str, CdxComponent] = {}
    for m in facts.members:
        if m.role == "kernel":
            component = Component(name="linux", version=facts.kernel_release, type=ComponentType.OPERATING_SYSTEM,
                                  bom_ref=m.ref, hashes=sha(m.sha256),
                                  properties=props(member=m.path, role=m.role, media_type=m.media_type,
                                                   config_sha256=facts.config_sha256))
        else:
            component = Component(name=m.path, type=_member_type(m.role), bom_ref=m.ref, hashes=sha(m.sha256),
                                  properties=props(member=m.path, role=m.role, media_type=m.media_type))
        members[m.role] = component
        bom.components.add(component)
    packages: dict[str, CdxComponent] = {}
    inputs: dict[str, list[CdxComponent]] = {}
    for i in facts.inputs:
        component = Component(name=i.name, type=ComponentType.FILE, bom_ref=i.ref, hashes=sha(i.sha256),
                              properties=props(input_kind=i.kind,
                                               debian_package=i.package.name if i.package else ""))
        bom.components.add(component)
        owner = "kernel" if i.kind in KERNEL_INPUT_KINDS or i.name.startswith("kernel/") else "initrd"
        inputs.setdefault(owner, []).append(component)
        if i.package is not None:
            if i.package.ref not in packages:
                package = Component(name=i.package.name, version=i.package.version, type=ComponentType.APPLICATION,
                                    bom_ref=i.package.ref, purl=_deb_purl(i.package),
                                    properties=props(debian_arch=i.package.arch))
                packages[i.package.ref] = package
                bom.components.add(package)
            bom.register_dependency(component, [packages[i.package.ref]])
    bom.register_dependency(bundle, list(members.values()))
    for role, consumed in inputs.items():
        target = members.get(role)
        if target is not None:
            bom.register_dependency(target, consumed)
    return JsonV1Dot6(bom).output_as_string(indent=None).encode("utf-8")


def _member_type(role: str) -> Any:
    from cyclonedx.model.component import ComponentType

    if role in ("dtb", "dtbo", "acpi", "handover"):
        return ComponentType.FIRMWARE
    if role in ("config", "cmdline", "dts", "system-map"):
        return ComponentType.DATA
    return ComponentType.FILE


def _deb_purl(package: DebPackage) -> Any:
    from packageurl import PackageURL

    class DebPurl(PackageURL):
        """packageurl-python leaves an epoch's ':' bare; Debian purls percent-encode it."""

        def to_string(self, encode: bool | None = True) -> str:
            return package.purl

    return DebPurl(type="deb", namespace="debian", name=package.name, version=package.version,
                   qualifiers={"arch": package.arch})


def validate_sbom(data: bytes) -> str | None:
    """None if ``data`` is valid CycloneDX 1.6 JSON, else the schema's first complaint."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8: {e}"
    error = JsonStrictValidator(SchemaVersion.V1_6).validate_str(text)
    if error is None:
        return None
    inner = getattr(error, "data", None)
    message = getattr(inner, "message", None)
    where = "/".join(str(p) for p in getattr(inner, "absolute_path", ()))
    return f"{where or '(top)'}: {message}" if message else str(error).splitlines()[0]


# ---- reading: plain JSON, no cyclonedx import ---------------------------------------

@dataclass(frozen=True, slots=True)
class SbomSummary:
    serial_number: str
    components: int
    by_type: Mapping[str, int]
    packages: tuple[str, ...]  # purls
    member_hashes: Mapping[str, str]  # bundle member path → sha256 the SBOM records

    def to_dict(self) -> dict[str, object]:
        return {"serial_number": self.serial_number, "components": self.components,
                "by_type": dict(self.by_type), "packages": list(self.packages)}


def read_sbom(data: bytes, what: str = SBOM_MEMBER) -> SbomSummary:
    """The counts and member digests of an SBOM; FormatError if it is no CycloneDX 1.6 JSON."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as e:
        raise FormatError(f"{what}: not JSON: {e}", code="bad-sbom") from None
    if not isinstance(doc, dict) or doc.get("bomFormat") != "CycloneDX" or doc.get("specVersion") != SPEC_VERSION:
        raise FormatError(f"{what}: not a CycloneDX {SPEC_VERSION} document", code="bad-sbom")
    components = doc.get("components", [])
    if not isinstance(components, list) or not all(isinstance(c, dict) for c in components):
        raise FormatError(f"{what}: components: expected a list of objects", code="bad-sbom")
    members: dict[str, str] = {}
    for c in components:
        path = _property(c, "mkspawn:member")
        if path is not None:
            members[path] = _sha256(c)
    purls = tuple(sorted(str(c["purl"]) for c in components if isinstance(c.get("purl"), str)))
    return SbomSummary(str(doc.get("serialNumber", "")), len(components),
                       dict(sorted(Counter(str(c.get("type")) for c in components).items())), purls, members)


def _property(component: Mapping[str, Any], name: str) -> str | None:
    for p in component.get("properties", []) or []:
        if isinstance(p, dict) and p.get("name") == name and isinstance(p.get("value"), str):
            return str(p["value"])
    return None


def _sha256(component: Mapping[str, Any]) -> str:
    for h in component.get("hashes", []) or []:
        if isinstance(h, dict) and h.get("alg") == "SHA-256":
            return str(h.get("content", ""))
    return ""


def sbom_members(members: Sequence[SbomMember]) -> tuple[SbomMember, ...]:
    return tuple(sorted(members, key=lambda m: m.path))
