"""A prebuilt host kernel for the boot check: Debian's cloud kernel, unpacked into the cache.

Compiling the tiny host (recipes/qemu-host.toml) costs minutes on a cold cache; Debian's
cloud kernel has everything the check needs built in (``KEXEC_FILE``, the 8250 serial
console, the initramfs decompressors; ``KEXEC_SIG_FORCE`` unset, so unsigned spawns load
without Secure Boot) and is one ``apt-get download`` away.  The package is unpacked with
``dpkg-deb -x`` into a staging directory, never installed: only its ``boot/`` files are
kept, as a store entry (mkimage/store.py) whose digests are re-checked on every use.

Where apt is not available the caller falls back to building the tiny host.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from mkimage.errors import ToolError
from mkimage.run import run
from mkimage.store import load_entry, locked, publish_entry, staging_dir

log = logging.getLogger("mkspawn")

# The unsigned 6.12 cloud kernel (zstd payload, EFI stub) the tests were first written
# against; if the archive no longer has it, the current cloud meta package's kernel
# (its unsigned twin when there is one).
PINNED_PACKAGE = "linux-image-6.12.107+deb12-cloud-amd64-unsigned"
META_PACKAGE = "linux-image-cloud-amd64"
ENTRY_KEY = "debian-cloud-amd64"
APT_TIMEOUT_S = 600
APT_TOOLS = ("apt-get", "apt-cache", "dpkg-deb")


def entry_dir(cache_root: Path) -> Path:
    return cache_root / "host-kernel" / "out" / ENTRY_KEY


def cached_debian_kernel(cache_root: Path) -> Path | None:
    """The unpacked ``boot/vmlinuz-<release>`` if the cache holds an intact one."""
    out = entry_dir(cache_root)
    entry = load_entry(out, ENTRY_KEY, stage="check")
    if entry is None:
        return None
    image = out / str(entry.get("image", ""))
    return image if image.is_file() and image.parent == out / "boot" else None


def apt_available() -> bool:
    return all(shutil.which(tool) for tool in APT_TOOLS)


def debian_kernel(cache_root: Path) -> Path:
    """``boot/vmlinuz-<release>`` of Debian's cloud kernel package, fetched into the cache
    on first use.  ToolError when apt cannot provide it."""
    cached = cached_debian_kernel(cache_root)
    if cached is not None:
        return cached
    missing = [tool for tool in APT_TOOLS if shutil.which(tool) is None]
    if missing:
        raise ToolError(f"{', '.join(missing)} not found: cannot fetch a Debian kernel package", code="tool-missing")
    out = entry_dir(cache_root)
    with locked(cache_root / "locks" / f"host-kernel-{ENTRY_KEY}.lock", "the Debian host kernel", stage="check"):
        cached = cached_debian_kernel(cache_root)  # another process may have fetched it meanwhile
        if cached is not None:
            return cached
        package = _resolve_package()
        log.info("check: fetching the host kernel %s with apt-get download (once; cached)", package)
        staging = staging_dir(out)
        # Beside out/, not in it: every child of out/ is an entry to `mkspawn cache`.
        with tempfile.TemporaryDirectory(prefix="download-", dir=out.parent.parent) as tmp:
            work = Path(tmp)
            # As root apt warns that _apt cannot write here and downloads unsandboxed: harmless.
            run(["apt-get", "download", package], stage="check", timeout_s=APT_TIMEOUT_S, cwd=work)
            debs = sorted(work.glob("*.deb"))
            if len(debs) != 1:
                raise ToolError(f"apt-get download {package} left {len(debs)} .deb files", code="tool-failed")
            run(["dpkg-deb", "-x", debs[0], work / "root"], stage="check", timeout_s=APT_TIMEOUT_S)
            images = sorted((work / "root" / "boot").glob("vmlinuz-*"))
            if not images:
                raise ToolError(f"{package} holds no /boot/vmlinuz-*", code="tool-failed")
            shutil.copytree(work / "root" / "boot", staging / "boot")  # the modules are not needed
        publish_entry(staging, out, {"key": ENTRY_KEY, "package": package,
                                     "image": f"boot/{images[-1].name}"})
    cached = cached_debian_kernel(cache_root)
    if cached is None:
        raise ToolError(f"the unpacked {package} in {out} failed its digest check", code="tool-failed")
    return cached


def _apt_knows(package: str) -> bool:
    done = run(["apt-cache", "show", "--no-all-versions", package], stage="check", timeout_s=60, check=False)
    return done.returncode == 0 and b"Package: " in done.stdout


def _resolve_package() -> str:
    if _apt_knows(PINNED_PACKAGE):
        return PINNED_PACKAGE
    done = run(["apt-cache", "depends", META_PACKAGE], stage="check", timeout_s=60)
    for line in done.stdout.decode().splitlines():
        key, _, value = line.strip().partition(":")
        if key == "Depends" and value.strip().startswith("linux-image-"):
            image = value.strip()
            return f"{image}-unsigned" if _apt_knows(f"{image}-unsigned") else image
    raise ToolError(f"apt-cache names no linux-image dependency of {META_PACKAGE}", code="tool-failed")
