"""Kernel modules in the initramfs: the named ones plus their modules.dep closure.

The kernel stage leaves ``lib/modules/<release>/`` as ``make modules_install`` wrote it.
Only the modules a recipe names, and those modules.dep says they need, go into the
archive.  depmod then indexes just those on a staging copy, so modules.dep,
modules.alias and the binary indexes name no module that is absent and busybox (or
kmod) ``modprobe NAME`` works in the guest.  The staging copy gets a modules.order
listing the chosen modules in the tree's own order (sorted for any it does not list),
which is the order depmod writes them in: the indexes do not depend on directory
listing order.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mkimage.errors import InputError
from mkimage.initramfs.newc import CpioEntry
from mkimage.initramfs.userland import host_file
from mkimage.run import run

MODULE_SUFFIXES = (".ko", ".ko.gz", ".ko.xz", ".ko.zst")
# Read by depmod for the built-in module indexes (modules.builtin.bin, .alias.bin).
BUILTIN_LISTS = ("modules.builtin", "modules.builtin.modinfo")
DEPMOD_TIMEOUT_S = 120
KEY = "initramfs.modules"


def module_name(path: str) -> str:
    """The name modprobe knows a module file by: ``kernel/lib/test-x.ko.xz`` → ``test_x``."""
    base = path.rsplit("/", 1)[-1]
    for suffix in MODULE_SUFFIXES:
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    return base.replace("-", "_")


@dataclass(frozen=True, slots=True)
class ModuleTree:
    """What modules.dep (and modules.builtin) of one ``lib/modules/<release>`` say."""

    modules_dir: Path
    deps: dict[str, tuple[str, ...]]  # module path (relative to modules_dir) → paths it needs
    by_name: dict[str, str]  # module name ('_' form) → module path
    builtin: frozenset[str]  # names of modules built into the image
    order: tuple[str, ...]  # modules.order, as installed

    @property
    def release(self) -> str:
        return self.modules_dir.name


def read_module_tree(modules_dir: Path) -> ModuleTree:
    dep_path = modules_dir / "modules.dep"
    try:
        text = dep_path.read_text(encoding="utf-8")
    except OSError as e:
        raise InputError(f"{KEY}: cannot read the kernel's {dep_path}: {e.strerror}", code="no-module-tree") from e
    deps: dict[str, tuple[str, ...]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        module, sep, rest = line.partition(":")
        if not sep:
            raise InputError(f"{dep_path}:{number}: expected 'module: dependencies', got {line!r}",
                             code="bad-modules-dep")
        deps[module.strip()] = tuple(rest.split())
    return ModuleTree(
        modules_dir=modules_dir,
        deps=deps,
        by_name={module_name(path): path for path in deps},
        builtin=frozenset(module_name(p) for p in _lines(modules_dir / "modules.builtin")),
        order=tuple(_lines(modules_dir / "modules.order")),
    )


def _lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except FileNotFoundError:
        return []


def module_closure(tree: ModuleTree, names: Sequence[str]) -> list[str]:
    """Paths of the named modules and everything they need, sorted.

    A name that is not a module is an error naming its recipe key, with the closest
    module names when there are any.
    """
    pending: deque[str] = deque()
    for i, name in enumerate(names):
        wanted = name.replace("-", "_")
        path = tree.by_name.get(wanted)
        if path is not None:
            pending.append(path)
            continue
        if wanted in tree.builtin:
            raise InputError(f"{KEY}[{i}]: {name!r} is built into the kernel ({tree.release}), not a loadable "
                             "module; drop it from the list", code="builtin-module")
        close = difflib.get_close_matches(wanted, sorted(tree.by_name), n=3, cutoff=0.6)
        known = (f"did you mean {', '.join(repr(c) for c in close)}?" if close
                 else f"the tree has {len(tree.by_name)} modules")
        raise InputError(f"{KEY}[{i}]: no module {name!r} in the kernel's module tree ({tree.modules_dir}); "
                         f"{known}", code="unknown-module")
    chosen: set[str] = set()
    while pending:
        path = pending.popleft()
        if path in chosen:
            continue
        if path not in tree.deps:
            raise InputError(f"{KEY}: modules.dep of {tree.release} names {path} as a dependency but has no "
                             "line for it", code="bad-modules-dep")
        chosen.add(path)
        pending.extend(tree.deps[path])
    return sorted(chosen)


def module_entries(modules_dir: Path, names: Sequence[str]) -> list[CpioEntry]:
    """Archive entries under ``lib/modules/<release>/``: the closure of ``names`` (read
    from the kernel's tree when the archive is written) and the indexes depmod builds
    for exactly those modules."""
    tree = read_module_tree(modules_dir)
    paths = module_closure(tree, names)
    prefix = f"lib/modules/{tree.release}/"
    entries = [host_file(modules_dir / path, KEY, None, name=os.fsencode(prefix + path), mode=0o644)
               for path in paths]
    indexes = _depmod_indexes(tree, paths)
    entries += [CpioEntry.file(os.fsencode(prefix + name), data, mode=0o644) for name, data in indexes.items()]
    return entries


def _depmod_indexes(tree: ModuleTree, paths: Sequence[str]) -> dict[str, bytes]:
    """Run depmod over a staging copy holding only ``paths``; return the files it wrote."""
    chosen = set(paths)
    order = [p for p in tree.order if p in chosen]
    order += sorted(chosen - set(order))
    with tempfile.TemporaryDirectory(prefix="mkspawn-modules-") as tmp:
        base = Path(tmp)
        staged = base / "lib" / "modules" / tree.release
        for path in paths:
            (staged / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(tree.modules_dir / path, staged / path)
        (staged / "modules.order").write_text("".join(f"{p}\n" for p in order))
        for name in BUILTIN_LISTS:
            if (tree.modules_dir / name).is_file():
                shutil.copyfile(tree.modules_dir / name, staged / name)
        run(["depmod", "-b", base, tree.release], stage="initramfs", timeout_s=DEPMOD_TIMEOUT_S)
        return {child.name: child.read_bytes() for child in sorted(staged.iterdir())
                if child.is_file() and child.name.startswith("modules.")}
