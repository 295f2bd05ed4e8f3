"""What a verifier requires of a bundle's components beyond their digests: the roles a
loader picks by, and media types that agree with the bytes.

A trusted key signing a manifest vouches for its digests, not for its sense: a manifest
without a kernel, with two, or with the kernel and initrd roles swapped must still be
refused, because the loader picks files by role and would boot whatever it is handed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import BinaryIO

from mkimage.bundle.container import BundleContents, iter_component
from mkimage.bundle.manifest import Arch, Component, Manifest, Role
from mkimage.bundle.media import INITRD_MAGICS, KERNEL_MEDIA, VMLINUX_MEDIA
from mkimage.bundle.sbom import SBOM_MEDIA_TYPE
from mkimage.errors import VerifyError
from mkimage.kernel.contract import ImageKind, detect_kind

# The loader takes at most one of each of these; a second would leave it to chance
# which one boots.  A bundle has exactly one kernel.
SINGLE_ROLES = (Role.KERNEL, Role.VMLINUX, Role.INITRD, Role.CMDLINE, Role.CONFIG, Role.SYSTEM_MAP,
                Role.DTB, Role.DTBO, Role.HANDOVER, Role.SBOM)
# A prebuilt initrd whose magic mkspawn does not know is recorded as opaque bytes.
OPAQUE_INITRD = "application/octet-stream"
CPIO_MAGICS = tuple(magic for magic, media in INITRD_MAGICS if media == "application/x-cpio")
KERNEL_KINDS = {Arch.X86_64: ImageKind.BZIMAGE, Arch.ARM64: ImageKind.ARM64_IMAGE}
# Enough for every magic above: the bzImage "HdrS" sits at 0x202, the arm64 one at 0x38.
HEAD_BYTES = 4096


def check_roles(path: Path, manifest: Manifest) -> None:
    """Role counts and role/media-type pairs, from the manifest alone (nothing read yet)."""
    counts = Counter(c.role for c in manifest.components)
    if counts[Role.KERNEL] != 1:
        raise VerifyError(f"{path}: the manifest names {counts[Role.KERNEL]} kernel components, expected exactly 1",
                          code="bad-roles")
    for role in SINGLE_ROLES:
        if counts[role] > 1:
            raise VerifyError(f"{path}: the manifest names {counts[role]} {role} components, expected at most 1",
                              code="bad-roles")
    initrd_media = {media for _magic, media in INITRD_MAGICS} | {OPAQUE_INITRD}
    allowed = {Role.KERNEL: {KERNEL_MEDIA[manifest.arch]}, Role.VMLINUX: {VMLINUX_MEDIA}, Role.INITRD: initrd_media,
               Role.SBOM: {SBOM_MEDIA_TYPE}}
    for c in manifest.components:
        if c.role in allowed and c.media_type not in allowed[c.role]:
            raise VerifyError(f"{path}: {c.path}: role {c.role} with media type {c.media_type}, expected "
                              f"{' or '.join(sorted(allowed[c.role]))} for {manifest.arch}", code="bad-roles")


def check_content_types(path: Path, f: BinaryIO, contents: BundleContents) -> None:
    """Kernel, vmlinux and initrd bytes must carry the magic their media type names."""
    manifest = contents.manifest
    for c in manifest.components:
        if c.role in (Role.KERNEL, Role.VMLINUX, Role.INITRD):
            head = _head(f, contents, c)
            problem = _magic_problem(c, head, manifest.arch)
            if problem is not None:
                raise VerifyError(f"{path}: {c.path}: {problem}", code="media-type-mismatch")


def _head(f: BinaryIO, contents: BundleContents, component: Component) -> bytes:
    head = b""
    for chunk in iter_component(f, contents, component.path, chunk_size=HEAD_BYTES):
        head = chunk
        break
    return head


def _magic_problem(c: Component, head: bytes, arch: Arch) -> str | None:
    if c.role is Role.INITRD:
        if c.media_type == OPAQUE_INITRD:
            return None
        wanted = tuple(magic for magic, media in INITRD_MAGICS if media == c.media_type)
        # A compressed initrd may start with an uncompressed early cpio (microcode, ACPI tables).
        if head.startswith(wanted + CPIO_MAGICS):
            return None
        return f"media type {c.media_type} but the data starts with {head[:6]!r}"
    kind = detect_kind(head)
    expected = ImageKind.ELF_VMLINUX if c.role is Role.VMLINUX else KERNEL_KINDS[arch]
    if kind is not expected:
        return f"role {c.role} ({c.media_type}) but the data looks like {kind}, expected {expected}"
    return None
