"""Build an initramfs file from the recipe's ``[initramfs]`` table.

Layout of the output (Documentation/driver-api/early-userspace/buffer-format.rst):
an optional uncompressed *early* archive (CPU microcode, ACPI table upgrades — the
only part early boot code scans), then the main archive, compressed as chosen.
Both archives are 4-byte aligned and end in TRAILER!!!, so the kernel unpacks them in
turn.  The file appears only when complete (``atomic_output``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mkimage.errors import InputError, MkspawnError, RecipeError
from mkimage.initramfs.compress import (
    choose_compression,
    compressing,
    compressor_versions,
)
from mkimage.initramfs.modules import module_entries
from mkimage.initramfs.newc import CpioEntry, write_archive
from mkimage.initramfs.userland import Layout, host_file, layout_userland
from mkimage.outputs import atomic_output
from mkimage.recipe.model import Arch, Compression, InitramfsSpec
from mkimage.run import tool_version

MICROCODE_DIR = "kernel/x86/microcode"  # Documentation/arch/x86/microcode.rst


@dataclass(frozen=True, slots=True)
class InitramfsResult:
    path: Path
    size: int
    sha256: str
    compression: Compression  # as resolved: never AUTO
    media_type: str  # e.g. application/x-cpio+zstd (an uncompressed early segment may precede it)
    early_size: int  # bytes of the uncompressed early segment at the start (0: none)
    tools: dict[str, str]  # library/tool name → version, for provenance
    inputs: tuple[tuple[str, str], ...]  # (host path, sha256) of every host file packed, sorted


def build_initramfs(
    spec: InitramfsSpec,
    out: Path,
    *,
    source_date_epoch: int,
    kernel_config: Path | None = None,
    early_files: Sequence[tuple[str, Path]] = (),
    modules_dir: Path | None = None,
    arch: Arch = Arch.X86_64,
) -> InitramfsResult:
    """Write the initramfs the spec describes to ``out``.

    ``kernel_config`` (a .config) restricts and resolves the compression;
    ``early_files`` are (archive path, host file) pairs for the early segment, e.g.
    ``("kernel/firmware/acpi/ssdt1.aml", path)`` from the ACPI stage; ``modules_dir``
    is the kernel's ``lib/modules/<release>`` that ``spec.modules`` are taken from;
    ``arch`` is the target, whose ELF machine every packed program must match.
    Problems with what the recipe names are RecipeErrors at the recipe line that named it.
    """
    try:
        return _build(spec, out, source_date_epoch, kernel_config, early_files, modules_dir, arch)
    except RecipeError as e:
        raise spec.locations.locate(e) from e


def _build(spec: InitramfsSpec, out: Path, source_date_epoch: int, kernel_config: Path | None,
           early_files: Sequence[tuple[str, Path]], modules_dir: Path | None, arch: Arch) -> InitramfsResult:
    if spec.image is not None:
        raise InputError("initramfs.image is set: the recipe uses a prebuilt initramfs, there is nothing to build",
                         code="prebuilt-initramfs")
    compression = choose_compression(spec.compression, kernel_config)
    digests: dict[str, str] = {}
    early = early_entries(spec, early_files, digests)
    layout, tools = layout_userland(spec, digests, arch)
    if spec.modules:
        _add_modules(layout, spec, modules_dir, kernel_config)
        tools["kmod"] = tool_version("depmod", "--version")
    try:
        with atomic_output(out) as f:
            early_size = write_archive(early, f, source_date_epoch=source_date_epoch) if early else 0
            with compressing(compression, f) as stream:
                write_archive(layout.entries(), stream, source_date_epoch=source_date_epoch)
    except OSError as e:
        raise MkspawnError(f"writing {out}: {e.strerror or e}", code="write-failed") from e
    size, sha256 = _measure(out)
    return InitramfsResult(
        path=out,
        size=size,
        sha256=sha256,
        compression=compression,
        media_type=compression.media_type,
        early_size=early_size,
        tools={**tools, **compressor_versions(compression)},
        inputs=tuple(sorted(digests.items())),
    )


def early_entries(spec: InitramfsSpec, early_files: Sequence[tuple[str, Path]],
                  digests: dict[str, str]) -> list[CpioEntry]:
    files = [(f"{MICROCODE_DIR}/{path.name}", path, f"initramfs.microcode[{i}]")
             for i, path in enumerate(spec.microcode)]
    files += [(name, path, f"early file {name}") for name, path in early_files]
    return [host_file(path, key, digests, name=os.fsencode(name), mode=0o644) for name, path, key in files]


def _add_modules(layout: Layout, spec: InitramfsSpec, modules_dir: Path | None,
                 kernel_config: Path | None) -> None:
    if modules_dir is None:
        if kernel_config is not None and "CONFIG_MODULES=y" not in kernel_config.read_text(errors="replace").split():
            raise InputError("initramfs.modules: the kernel is built without CONFIG_MODULES=y, so it has no "
                             'modules to load; set MODULES = "y" in [kernel.options]', code="no-module-tree")
        raise InputError("initramfs.modules: the kernel has no module tree to take modules from; only a kernel "
                         "built from [kernel] source with CONFIG_MODULES=y brings one (a prebuilt [kernel] image "
                         "does not)", code="no-module-tree")
    for entry in module_entries(modules_dir, spec.modules):
        layout.add(entry, "initramfs.modules", generated=True)


def _measure(path: Path) -> tuple[int, str]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        return f.tell(), digest.hexdigest()
