"""mkspawn's own data files: kernel fragments and patches, the default init, the
recipes (the check's host recipe among them) and the check host's scripts.

The repository's top-level ``kernel/``, ``initramfs/`` and ``recipes/`` are the source
of truth; ``mkimage/_assets/`` holds symlinks to them, which an editable install
follows into the checkout and a wheel build copies in as package data.  Every lookup
goes through here, so an installed mkspawn never looks for a checkout.

Recipes name a shipped file as ``builtin:<dir>/<path>`` (``builtin:kernel/spawn-minimal.config``).
"""

from __future__ import annotations

import functools
from importlib.resources import files
from pathlib import Path, PurePosixPath

from mkimage.errors import InputError

SCHEME = "builtin:"
ASSETS_DIR = "_assets"
# The repository directories shipped in the wheel, each under its own name.
SHIPPED_DIRS = ("initramfs", "kernel", "recipes")


@functools.cache
def package_dir() -> Path:
    """The installed ``mkimage`` package directory (the checkout's, when editable)."""
    root = files("mkimage")
    # Tools (make, cpio, qemu) are handed paths, so the package must be plain files,
    # not a zip: pip and every distro install it that way.
    if not isinstance(root, Path):
        raise InputError(f"mkspawn is installed as {type(root).__name__}, not as files on disk; "
                         "reinstall it with pip", code="not-installed-as-files")
    return root


def package_file(name: str) -> Path:
    """A data file inside the package, e.g. ``qemu/probe.sh``."""
    return package_dir() / name


def is_builtin(text: str) -> bool:
    return text.startswith(SCHEME)


def builtin_path(text: str) -> Path:
    """``builtin:kernel/spawn-minimal.config`` → the shipped file's path.

    Raises ``InputError`` (code ``no-such-builtin``) for a name outside the shipped
    directories or one that is not shipped; the caller adds the recipe location.
    """
    name = text.removeprefix(SCHEME)
    parts = PurePosixPath(name).parts
    if (not parts or parts[0] not in SHIPPED_DIRS or PurePosixPath(name).is_absolute()
            or ".." in parts or "\\" in name):
        raise InputError(f"{SCHEME}{name}: expected {SCHEME}<dir>/<file> with <dir> one of "
                         f"{', '.join(SHIPPED_DIRS)}", code="no-such-builtin")
    path = package_dir() / ASSETS_DIR / Path(*parts)
    if not path.exists():
        raise InputError(f"{SCHEME}{name}: mkspawn ships no such file", code="no-such-builtin")
    return path


def asset_path(name: str) -> Path:
    """A shipped file by its name under the shipped directories (``initramfs/init.sh``)."""
    return builtin_path(SCHEME + name)


def builtin_name(path: Path) -> str | None:
    """The shipped name of ``path`` (``kernel/spawn-minimal.config``), or None.

    The same file gets the same name from an editable install (where the symlinks
    resolve into the checkout) and from a wheel, so provenance does not depend on how
    mkspawn was installed.
    """
    real = path.resolve()
    for top in SHIPPED_DIRS:
        link = package_dir() / ASSETS_DIR / top
        for root in {link, link.resolve()}:
            if real.is_relative_to(root):
                return (PurePosixPath(top) / real.relative_to(root).as_posix()).as_posix()
    return None


def package_name(path: Path) -> str | None:
    """The name of ``path`` relative to the package (``qemu/probe.sh``), or None."""
    real = path.resolve()
    root = package_dir().resolve()
    return real.relative_to(root).as_posix() if real.is_relative_to(root) else None
