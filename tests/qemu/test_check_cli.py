"""`mkspawn check` refuses before booting: the bundle is verified first (same code as
`mkspawn verify`), and option clashes are usage errors.  No QEMU runs here."""

from __future__ import annotations

import shutil
from pathlib import Path

from mkimage.pipeline import build_bundle
from mkimage.recipe.load import load_recipe
from tests.conftest import run_mkspawn as mkspawn
from tests.qemu.conftest import EPOCH, KEYS, make_bundle


def test_an_unsigned_bundle_is_rejected_before_any_boot(tmp_path: Path, synthetic_kernel: Path,
                                                         trust_dir: Path) -> None:
    (tmp_path / "initrd").write_bytes(b"070701" + b"0" * 104)
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[metadata]\nname = "u"\nversion = "1.0.0"\nsource_date_epoch = {EPOCH}\n'
                      f'[kernel]\nimage = "{synthetic_kernel}"\n[initramfs]\nimage = "initrd"\n')
    bundle = tmp_path / "u.mkb"
    build_bundle(load_recipe(recipe), bundle)
    done = mkspawn("check", bundle, "--host-kernel", synthetic_kernel, "--trust", trust_dir)
    assert done.returncode == 3, done.stderr
    assert done.stderr.strip().endswith("bundle is not signed [unsigned]")
    assert done.stdout == ""


def test_a_bundle_by_an_untrusted_key_is_rejected(tmp_path: Path, synthetic_kernel: Path) -> None:
    (tmp_path / "initrd").write_bytes(b"070701" + b"0" * 104)
    bundle = make_bundle(tmp_path, synthetic_kernel, tmp_path / "initrd")
    other = tmp_path / "other-trust"
    other.mkdir()
    shutil.copy(KEYS / "other-ed25519.pub.pem", other)
    done = mkspawn("check", bundle, "--host-kernel", synthetic_kernel, "--trust", other)
    assert done.returncode == 3 and "[untrusted-key]" in done.stderr


def test_host_kernel_and_host_recipe_are_exclusive(tmp_path: Path, synthetic_kernel: Path) -> None:
    done = mkspawn("check", synthetic_kernel, "--host-kernel", synthetic_kernel, "--host-recipe", synthetic_kernel)
    assert done.returncode == 2 and "not both" in done.stderr
