"""What every stage hands to the bundle: files with a role, a member path and a media type.

Shared, so the stages before the bundle (device tree, ACPI, handover) name their outputs
with the manifest's own roles instead of a mirror of them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class Role(enum.StrEnum):
    """What a component is for; the loader picks components by role."""

    KERNEL = "kernel"
    VMLINUX = "vmlinux"
    INITRD = "initrd"
    CMDLINE = "cmdline"
    CONFIG = "config"
    SYSTEM_MAP = "system-map"
    DTBO = "dtbo"
    DTB = "dtb"
    DTS = "dts"
    ACPI = "acpi"
    HANDOVER = "handover"
    SBOM = "sbom"  # the CycloneDX SBOM (mkimage/bundle/sbom.py)


@dataclass(frozen=True, slots=True)
class Artifact:
    """One file for the bundle: its role, member path, where it is on disk, its media type."""

    role: Role
    member: str
    path: Path
    media_type: str
