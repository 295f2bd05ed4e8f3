"""`mkspawn check --static`: the loader contract, checked without booting anything.

The target is either a bundle (its kernel component is checked against the bundle's own
ABI profile, arch and cmdline, after the bundle's structure and digests check out) or a
bare kernel image with the profile and arch given by the caller.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mkimage.bundle.container import iter_component
from mkimage.bundle.manifest import Role
from mkimage.bundle.tarball import BLOCK_SIZE
from mkimage.bundle.verify import open_regular, opened_bundle
from mkimage.errors import FormatError, InputError
from mkimage.kernel.contract import ContractReport, check_image
from mkimage.kernel.release import embedded_config, kernel_release

BUNDLE_FIRST_MEMBER = b"manifest.json\0"


@dataclass(frozen=True, slots=True)
class StaticCheck:
    target: Path
    component: str | None  # the bundle member checked, None for a bare image
    report: ContractReport
    release: str | None
    config_found: bool
    config_reason: str

    def to_dict(self) -> dict[str, object]:
        return {
            "target": str(self.target),
            "component": self.component,
            "release": self.release,
            "embedded_config": self.config_found,
            "embedded_config_detail": self.config_reason,
            **self.report.to_dict(),
        }


def _is_bundle(head: bytes) -> bool:
    return len(head) >= BLOCK_SIZE and head.startswith(BUNDLE_FIRST_MEMBER)


def _read(path: Path) -> bytes:
    with open_regular(path, "image") as f:
        try:
            return f.read()
        except OSError as e:
            raise InputError(f"{path}: cannot read: {e.strerror}", code="unreadable-input") from None


def _bundle_image(path: Path) -> tuple[bytes, str, str, str, bytes]:
    """(image bytes, member, profile, arch, cmdline) of the component the loader receives."""
    with opened_bundle(path) as (f, contents):
        manifest = contents.manifest
        by_role = {c.role: c for c in manifest.components}
        wants_elf = str(manifest.abi_profile) == "mk2" or (
            str(manifest.abi_profile) == "mk-master" and Role.VMLINUX in by_role)
        chosen = by_role.get(Role.VMLINUX if wants_elf else Role.KERNEL)
        if chosen is None:
            raise InputError(f"{path}: bundle has no {'vmlinux' if wants_elf else 'kernel'} component",
                             code="missing-member")
        image = b"".join(iter_component(f, contents, chosen.path))
        cmdline = b""
        if Role.CMDLINE in by_role:
            cmdline = b"".join(iter_component(f, contents, by_role[Role.CMDLINE].path))
    return image, chosen.path, str(manifest.abi_profile), str(manifest.arch), cmdline


def static_check(target: Path, *, profile: str | None, arch: str | None, cmdline: str | None) -> StaticCheck:
    data = _read(target)
    component = None
    cmd: bytes | None
    if _is_bundle(data[:BLOCK_SIZE]):
        data, component, bundle_profile, bundle_arch, bundle_cmdline = _bundle_image(target)
        profile = profile or bundle_profile
        arch = arch or bundle_arch
        cmd = bundle_cmdline if cmdline is None else cmdline.encode()
    else:
        cmd = cmdline.encode() if cmdline is not None else None
    report = check_image(data, abi_profile=profile or "none", arch=arch or "x86_64", cmdline=cmd)
    try:
        release: str | None = kernel_release(data)
    except FormatError:
        release = None
    config = embedded_config(data) if report.ok else None
    return StaticCheck(target, component, report, release, bool(config and config.text),
                       config.reason if config else "not looked for: the image fails its contract")
