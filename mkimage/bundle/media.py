"""Media types of bundle components, and the magics that tell them apart."""

from __future__ import annotations

from mkimage.recipe.targets import Arch

# Media types name the bytes, not the role: a loader can tell a bzImage from an
# arm64 Image, or a zstd initrd from a plain cpio, without sniffing.
KERNEL_MEDIA = {Arch.X86_64: "application/vnd.linux.bzimage", Arch.ARM64: "application/vnd.linux.arm64-image"}
VMLINUX_MEDIA = "application/vnd.linux.vmlinux+elf"
CONFIG_MEDIA = "text/x-kconfig"
CMDLINE_MEDIA = "text/plain"
INITRD_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"070701", "application/x-cpio"),
    (b"070702", "application/x-cpio"),
    (b"\x1f\x8b", "application/x-cpio+gzip"),
    (b"\xfd7zXZ\x00", "application/x-cpio+xz"),
    (b"\x28\xb5\x2f\xfd", "application/x-cpio+zstd"),
    (b"\x02\x21\x4c\x18", "application/x-cpio+lz4"),
    (b"BZh", "application/x-cpio+bzip2"),
    (b"\x5d\x00", "application/x-cpio+lzma"),
)


def initrd_media_type(head: bytes) -> str:
    for magic, media in INITRD_MAGICS:
        if head.startswith(magic):
            return media
    return "application/octet-stream"
