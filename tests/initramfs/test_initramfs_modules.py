"""initramfs.modules without a kernel build: the modules.dep closure and every refusal.

The real module tree (a kernel built with modules, booted in QEMU) is exercised in
tests/kernel/test_modules.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mkimage.errors import InputError, RecipeError
from mkimage.initramfs.build import build_initramfs
from mkimage.initramfs.modules import module_closure, module_name, read_module_tree
from mkimage.recipe.load import load_recipe
from mkimage.recipe.model import InitramfsSpec

# As depmod writes it: every line lists the module's full dependency list.
MODULES_DEP = """\
kernel/crypto/crypto_skcipher.ko:
kernel/crypto/ecb.ko: kernel/crypto/crypto_skcipher.ko
kernel/lib/test_static_key_base.ko:
kernel/lib/test_static_keys.ko: kernel/lib/test_static_key_base.ko
kernel/drivers/net/dummy-net.ko.xz:
kernel/fs/f.ko: kernel/fs/g.ko kernel/fs/h.ko
kernel/fs/g.ko: kernel/fs/h.ko
kernel/fs/h.ko:
"""


@pytest.fixture
def modules_dir(tmp_path: Path) -> Path:
    tree = tmp_path / "lib" / "modules" / "6.12.0-test"
    tree.mkdir(parents=True)
    (tree / "modules.dep").write_text(MODULES_DEP)
    (tree / "modules.builtin").write_text("kernel/lib/crc32.ko\nkernel/crypto/sha256_generic.ko\n")
    return tree


def test_module_names_are_what_modprobe_takes() -> None:
    assert module_name("kernel/lib/test_static_keys.ko") == "test_static_keys"
    assert module_name("kernel/drivers/net/dummy-net.ko.xz") == "dummy_net"
    assert module_name("extra/x.ko.zst") == "x"


def test_closure_follows_modules_dep_and_treats_dash_as_underscore(modules_dir: Path) -> None:
    tree = read_module_tree(modules_dir)
    assert tree.release == "6.12.0-test"
    assert module_closure(tree, ["test-static-keys"]) == ["kernel/lib/test_static_key_base.ko",
                                                          "kernel/lib/test_static_keys.ko"]
    assert module_closure(tree, ["f", "dummy_net", "g"]) == [
        "kernel/drivers/net/dummy-net.ko.xz", "kernel/fs/f.ko", "kernel/fs/g.ko", "kernel/fs/h.ko"]
    assert module_closure(tree, []) == []


def test_unknown_module_names_the_key_and_close_matches(modules_dir: Path) -> None:
    with pytest.raises(InputError) as e:
        module_closure(read_module_tree(modules_dir), ["ecb", "test_static_key"])
    assert e.value.code == "unknown-module"
    assert e.value.message == (f"initramfs.modules[1]: no module 'test_static_key' in the kernel's module tree "
                               f"({modules_dir}); did you mean 'test_static_keys', 'test_static_key_base'?")


def test_unknown_module_without_close_matches_says_how_many_there_are(modules_dir: Path) -> None:
    with pytest.raises(InputError, match=r"initramfs.modules\[0\]: no module 'zzz' .*; the tree has 8 modules$"):
        module_closure(read_module_tree(modules_dir), ["zzz"])


def test_builtin_module_is_refused(modules_dir: Path) -> None:
    with pytest.raises(InputError) as e:
        module_closure(read_module_tree(modules_dir), ["sha256-generic"])
    assert e.value.code == "builtin-module"
    assert e.value.message.startswith("initramfs.modules[0]: 'sha256-generic' is built into the kernel (6.12.0-test)")


def test_dependency_missing_from_modules_dep_is_a_clear_error(modules_dir: Path) -> None:
    (modules_dir / "modules.dep").write_text("kernel/a.ko: kernel/b.ko\n")
    with pytest.raises(InputError, match="names kernel/b.ko as a dependency but has no line for it"):
        module_closure(read_module_tree(modules_dir), ["a"])


def test_a_tree_without_modules_dep_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError) as e:
        read_module_tree(tmp_path)
    assert e.value.code == "no-module-tree" and "modules.dep" in e.value.message


def test_modules_without_a_module_tree_are_refused(tmp_path: Path) -> None:
    spec = InitramfsSpec(busybox=False, init=Path("/bin/true"), modules=["test_static_keys"])
    out = tmp_path / "initrd"
    with pytest.raises(InputError) as e:
        build_initramfs(spec, out, source_date_epoch=0)
    assert e.value.code == "no-module-tree"
    assert "only a kernel built from [kernel] source with CONFIG_MODULES=y brings one" in e.value.message
    config = tmp_path / "config"
    config.write_text("CONFIG_64BIT=y\n# CONFIG_MODULES is not set\n")
    with pytest.raises(InputError, match=r"built without CONFIG_MODULES=y.*MODULES = \"y\" in \[kernel.options\]"):
        build_initramfs(spec, out, source_date_epoch=0, kernel_config=config)
    assert not out.exists()


def test_module_names_are_validated_with_their_line(tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[metadata]\nname = "t"\nversion = "1"\n[kernel]\nimage = "r.toml"\n'
                      '[initramfs]\nmodules = ["ok", "kernel/lib/x.ko"]\n')
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe)
    assert e.value.render().startswith(f"{recipe}:7: [initramfs] modules: expected a module name such as "
                                       "'test_static_keys' (no path, no .ko), got 'kernel/lib/x.ko'")
