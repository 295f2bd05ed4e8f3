"""A small real bundle with busybox and a file given by path, for the SBOM, provenance
and reproduce tests: a prebuilt synthetic kernel keeps it to a second or two."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from mkimage.pipeline import BuildResult, build_bundle
from mkimage.recipe.load import load_recipe
from mkimage.signing.keys import PrivateKey
from tests.conftest import needs_tool

EPOCH = 1_700_000_000
KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
RECIPE = f"""
[metadata]
name = "evidence"
version = "1.0.0"
source_date_epoch = {EPOCH}
[kernel]
image = "bzImage"
config = "config"
cmdline = "console=ttyS0"
[initramfs]
busybox = true
command = "echo evidence"
files = [{{ src = "motd", dst = "/etc/motd" }}]
"""
CONFIG = "CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\n# CONFIG_MODULES is not set\n"


def write_recipe_dir(directory: Path, kernel: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(kernel, directory / "bzImage")
    (directory / "config").write_text(CONFIG)
    (directory / "motd").write_text("hello\n")
    (directory / "spawn.toml").write_text(RECIPE)
    return directory / "spawn.toml"


def build(directory: Path, kernel: Path, out: Path, signers: Sequence[PrivateKey] = (),
          overrides: Sequence[str] = (), cache_root: Path | None = None) -> BuildResult:
    needs_tool("busybox")
    recipe = load_recipe(write_recipe_dir(directory, kernel), overrides)
    return build_bundle(recipe, out, signers, overrides=overrides, cache_root=cache_root or directory / "cache")


def member(bundle: Path, name: str) -> bytes:
    import tarfile

    with tarfile.open(bundle) as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()
