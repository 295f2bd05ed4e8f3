"""Build an initramfs file from the recipe's ``[initramfs]`` table.

Layout of the output (Documentation/driver-api/early-userspace/buffer-format.rst):
an optional uncompressed *early* archive (CPU microcode, ACPI table upgrades — the
only part early boot code scans), then the main archive, compressed as chosen.
Both archives are 4-byte aligned and end in TRAILER!!!, so the kernel unpacks them in
turn.  The file appears only when complete (``atomic_output``).

With a cache root, the finished file is kept as a content-addressed entry
(``initramfs/out/<key>/``, see mkimage/store.py) keyed by everything that decides its
bytes: every entry's name, type, mode, owner, mtime, link target and device numbers, the
data of generated files, a stat key of every host file packed (any write to a file
changes it), the compression with its level and library versions, and
SOURCE_DATE_EPOCH.  A rebuild with unchanged inputs copies the entry instead of reading
and compressing everything again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mkimage import progress
from mkimage.errors import InputError, MkspawnError, RecipeError
from mkimage.initramfs.compress import (
    choose_compression,
    compressing,
    compressor_versions,
)
from mkimage.initramfs.modules import module_entries
from mkimage.initramfs.newc import CpioEntry, write_archive
from mkimage.initramfs.userland import HostFile, Layout, host_file, layout_userland
from mkimage.outputs import atomic_output, atomic_path
from mkimage.recipe.model import Arch, Compression, InitramfsSpec
from mkimage.run import tool_version
from mkimage.store import load_entry, locked, publish_entry, staging_dir, stat_key

log = logging.getLogger("mkspawn")

MICROCODE_DIR = "kernel/x86/microcode"  # Documentation/arch/x86/microcode.rst
# Bump when the meaning of a key changes.  Edits to the writer and the compressors need
# no bump: their sources are part of every key (writer_digest).
CACHE_VERSION = 1
CACHED_NAME = "initrd"


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
    cache_root: Path | None = None,
    durable: bool = True,
) -> InitramfsResult:
    """Write the initramfs the spec describes to ``out``.

    ``kernel_config`` (a .config) restricts and resolves the compression;
    ``early_files`` are (archive path, host file) pairs for the early segment, e.g.
    ``("kernel/firmware/acpi/ssdt1.aml", path)`` from the ACPI stage; ``modules_dir``
    is the kernel's ``lib/modules/<release>`` that ``spec.modules`` are taken from;
    ``arch`` is the target, whose ELF machine every packed program must match;
    ``cache_root`` (the project cache) keeps the result for rebuilds with the same inputs.
    ``durable=False`` is for a scratch ``out`` that dies with its temp directory (the
    pipeline's): it is not fsynced, and a cache hit is hard-linked rather than copied.
    Problems with what the recipe names are RecipeErrors at the recipe line that named it.
    """
    try:
        return _build(spec, out, source_date_epoch, kernel_config, early_files, modules_dir, arch, cache_root,
                      durable)
    except RecipeError as e:
        raise spec.locations.locate(e) from e


def _build(spec: InitramfsSpec, out: Path, source_date_epoch: int, kernel_config: Path | None,
           early_files: Sequence[tuple[str, Path]], modules_dir: Path | None, arch: Arch,
           cache_root: Path | None, durable: bool) -> InitramfsResult:
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
    entries = layout.entries()
    tools.update(compressor_versions(compression))
    key = None if cache_root is None else cache_key(early, entries, compression, source_date_epoch)
    if cache_root is not None and key is not None:
        cached = _cached(cache_root, key, out, compression, tools, durable)
        if cached is not None:
            return cached
    data = sum(_data_size(e) for e in entries)
    try:
        with (atomic_output(out) if durable else out.open("wb")) as f, \
                progress.task("initramfs: pack", total=data, unit="bytes") as task:
            early_size = write_archive(early, f, source_date_epoch=source_date_epoch) if early else 0
            with compressing(compression, f) as stream:
                write_archive(entries, stream, source_date_epoch=source_date_epoch, on_member=task.advance)
    except OSError as e:
        raise MkspawnError(f"writing {out}: {e.strerror or e}", code="write-failed") from e
    size, sha256 = _measure(out)
    result = InitramfsResult(
        path=out,
        size=size,
        sha256=sha256,
        compression=compression,
        media_type=compression.media_type,
        early_size=early_size,
        tools=tools,
        inputs=tuple(sorted(digests.items())),
    )
    if cache_root is not None and key is not None:
        _store(cache_root, key, result)
    return result


# ---- the cache ------------------------------------------------------------------------

def cache_key(early: Sequence[CpioEntry], main: Sequence[CpioEntry], compression: Compression,
              source_date_epoch: int) -> str | None:
    """The digest of everything that decides the initramfs bytes (see the module doc);
    None when some entry's data cannot be identified without reading it."""
    records: list[object] = [CACHE_VERSION, writer_digest(), str(compression), compressor_versions(compression),
                             source_date_epoch]
    for segment in (early, main):
        rows = []
        for e in segment:
            if isinstance(e.data, bytes):
                data = "sha256:" + hashlib.sha256(e.data).hexdigest()
            elif isinstance(e.data, HostFile):
                try:
                    data = stat_key("file", Path(e.data.path)) + f"|{e.data.size}"
                except OSError:
                    return None  # the build itself reports it, against its recipe key
            else:
                return None
            rows.append([e.name.hex(), e.kind.name, e.mode, e.uid, e.gid, e.mtime, e.target.hex(),
                         e.rdev_major, e.rdev_minor, data])
        records.append(rows)
    return hashlib.sha256(json.dumps(records, separators=(",", ":")).encode()).hexdigest()


def writer_digest() -> str:
    """The sources that turn entries into bytes (the newc writer, the compressors)."""
    digest = hashlib.sha256()
    for module in (write_archive.__module__, compressing.__module__):
        source = Path(str(sys.modules[module].__file__))
        digest.update(source.name.encode() + b"\0" + source.read_bytes())
    return digest.hexdigest()


def _entry_dir(cache_root: Path, key: str) -> Path:
    return cache_root / "initramfs" / "out" / key


def _cached(cache_root: Path, key: str, out: Path, compression: Compression,
            tools: dict[str, str], durable: bool) -> InitramfsResult | None:
    """The cached result for ``key``, copied to ``out``; None on a miss."""
    entry_dir = _entry_dir(cache_root, key)
    entry = load_entry(entry_dir, key, stage="initramfs")  # re-hashes the cached file
    if entry is None:
        return None
    try:
        if durable:
            with atomic_path(out) as tmp:
                shutil.copyfile(entry_dir / CACHED_NAME, tmp)  # in-kernel copy (sendfile)
        else:
            _scratch_copy(entry_dir / CACHED_NAME, out)
    except OSError as e:
        raise MkspawnError(f"writing {out}: {e.strerror or e}", code="write-failed") from e
    log.debug("initramfs: cache hit %s", key[:16])
    return InitramfsResult(
        path=out,
        size=entry["size"],
        sha256=entry["sha256_initrd"],
        compression=compression,
        media_type=compression.media_type,
        early_size=entry["early_size"],
        tools=tools,
        inputs=tuple((name, digest) for name, digest in entry["inputs"]),
    )


def _scratch_copy(cached: Path, out: Path) -> None:
    """A hard link where the cache and ``out`` share a filesystem: the scratch file is only
    read (into the bundle), and the entry is re-hashed on every hit all the same."""
    out.unlink(missing_ok=True)
    try:
        os.link(cached, out)
    except OSError:
        shutil.copyfile(cached, out)


def _store(cache_root: Path, key: str, result: InitramfsResult) -> None:
    """Keep ``result`` for the next build with the same key.  Best effort: a cache that
    cannot be written costs the next build time, never this one its result."""
    entry_dir = _entry_dir(cache_root, key)
    try:
        with locked(cache_root / "locks" / f"initramfs-{key}.lock", "the initramfs cache", stage="initramfs"):
            staging = staging_dir(entry_dir)
            shutil.copyfile(result.path, staging / CACHED_NAME)
            publish_entry(staging, entry_dir, {
                "key": key,
                "size": result.size,
                "sha256_initrd": result.sha256,
                "early_size": result.early_size,
                "inputs": [list(pair) for pair in result.inputs],
            })
    except OSError as e:
        log.warning("initramfs: could not cache the result in %s: %s", entry_dir, e.strerror or e)


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


def _data_size(entry: CpioEntry) -> int:
    data = entry.data
    return len(data) if isinstance(data, bytes) else data.size if isinstance(data, HostFile) else 0


def _measure(path: Path) -> tuple[int, str]:
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256")
        return f.tell(), digest.hexdigest()
