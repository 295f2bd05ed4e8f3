"""Building recipes/minimal.toml for real (once; the project cache keeps it across runs),
then proving what a cache hit, a bad patch, a dropped option and a fragment clash do —
with a recording ``make`` first on PATH so "no make ran" is observed, not assumed."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mkimage import progress
from mkimage.errors import InputError, RecipeError, ToolError
from mkimage.kernel.build import KernelBuild, build_kernel
from mkimage.kernel.kconfig import KernelConfigError
from mkimage.kernel.release import embedded_config, kernel_release
from mkimage.recipe.load import load_recipe
from mkimage.recipe.model import KernelSource, KernelSpec
from tests.conftest import missing, needs_tool
from tests.kernel.conftest import recorded_calls as _calls

REPO = Path(__file__).resolve().parents[2]
MINIMAL = REPO / "recipes" / "minimal.toml"
DEBIAN_SOURCE = Path("/usr/src/linux-source-6.12.tar.xz")
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mkspawn"
MARKER = b"mkspawn: spawn kernel built by mkspawn"


def _minimal_spec() -> KernelSpec:
    needs_tool("make", "gcc", "flex", "bison", "bc", "tar", "patch")
    if not DEBIAN_SOURCE.is_file():
        missing(f"{DEBIAN_SOURCE} is missing (Debian package linux-source-6.12)")
    return load_recipe(MINIMAL).kernel


def _build(spec: KernelSpec) -> KernelBuild:
    return build_kernel(spec, arch="x86_64", cache_root=CACHE_ROOT, source_date_epoch=0)


@pytest.fixture(scope="module")
def minimal() -> KernelBuild:
    """The real kernel: a cold build takes minutes once, then the cache answers."""
    return _build(_minimal_spec())


@pytest.mark.slow
def test_minimal_recipe_builds_a_patched_612_kernel(minimal: KernelBuild) -> None:
    assert minimal.release.startswith("6.12.")
    assert (minimal.image.read_bytes()[0x202:0x206]) == b"HdrS"
    assert kernel_release(minimal.image.read_bytes()) == minimal.release
    assert MARKER in minimal.vmlinux.read_bytes(), "our patch must be compiled in"
    config = minimal.config.read_text()
    for line in ("CONFIG_64BIT=y", "CONFIG_KEXEC_FILE=y", "CONFIG_IKCONFIG_PROC=y", "CONFIG_RD_ZSTD=y",
                 "# CONFIG_VT is not set", "# CONFIG_INPUT is not set"):  # the headless fragment held
        assert line in config.splitlines()
    assert embedded_config(minimal.image.read_bytes()).text == config, "IKCONFIG carries the final .config"
    assert minimal.system_map.read_text().count(" T start_kernel") == 1
    kinds = [kind for kind, _, _ in minimal.inputs]
    assert kinds == ["source", "patch", "config-fragment", "config-fragment"]  # spawn-minimal, spawn-headless
    assert all(len(digest) == 64 for _, _, digest in minimal.inputs)
    assert set(minimal.tools) >= {"make", "gcc", "ld"}
    assert minimal.image.is_relative_to(CACHE_ROOT)


@pytest.mark.slow
def test_unchanged_recipe_is_a_cache_hit_that_runs_no_make(minimal: KernelBuild, make_calls: Path) -> None:
    spec = _minimal_spec()
    first = _build(spec)
    # A make binary not seen before is asked its version once; nothing else may run.
    assert set(_calls(make_calls)) <= {"--version"}
    make_calls.write_text("")
    again = _build(spec)
    assert _calls(make_calls) == []
    for hit in (first, again):
        assert hit.cache_hit and hit.cache_key == minimal.cache_key
        assert hit.image == minimal.image and hit.config_sha256 == minimal.config_sha256
        assert hit.inputs == minimal.inputs


@pytest.mark.slow
def test_unmet_dependency_fails_at_config_time(minimal: KernelBuild, make_calls: Path) -> None:
    spec = dataclasses.replace(_minimal_spec(), options={"IKCONFIG_PROC": "y", "PROC_FS": "n"})
    with pytest.raises(KernelConfigError) as e:
        _build(spec)
    assert e.value.code == "config-dropped"
    assert e.value.message.startswith("kernel config: 1 requested option was dropped by olddefconfig: "
                                      "CONFIG_IKCONFIG_PROC: requested y, got n ([kernel.options])")
    assert "depends on IKCONFIG && PROC_FS [now IKCONFIG=y, PROC_FS=n]" in e.value.message
    targets = [c.split()[-1] for c in _calls(make_calls)]
    assert "tinyconfig" in targets and "olddefconfig" in targets
    assert "bzImage" not in targets, "nothing may be compiled once the config is known to be wrong"


@pytest.mark.slow
def test_broken_patch_fails_naming_file_and_hunk(minimal: KernelBuild, make_calls: Path, tmp_path: Path) -> None:
    broken = tmp_path / "0002-broken.patch"
    broken.write_text("--- a/init/main.c\n+++ b/init/main.c\n@@ -1,3 +1,3 @@\n-no such\n+line\n context\n")
    spec = _minimal_spec()
    spec = dataclasses.replace(spec, patches=[*spec.patches, broken])
    with pytest.raises(ToolError) as e:
        _build(spec)
    assert e.value.code == "patch-failed"
    assert e.value.message == (f"kernel: patch {broken} does not apply: "
                               "init/main.c: hunk #1 FAILED at line 1")
    assert set(_calls(make_calls)) <= {"--version"}


def test_conflicting_fragments_fail_before_any_make(make_calls: Path, tmp_path: Path) -> None:
    one, two = tmp_path / "one.config", tmp_path / "two.config"
    one.write_text("CONFIG_SMP=y\n")
    two.write_text("# a comment\n# CONFIG_SMP is not set\n")
    tarball = tmp_path / "t.tar"  # never opened: the clash is found first
    tarball.write_bytes(b"")
    spec = KernelSpec(source=KernelSource(tarball=tarball), fragments=[one, two])
    with pytest.raises(KernelConfigError) as e:
        build_kernel(spec, arch="x86_64", cache_root=tmp_path / "cache", source_date_epoch=0)
    assert str(one) in e.value.message and str(two) in e.value.message
    assert e.value.message.endswith("CONFIG_SMP=y in " + str(one) + ":1 but n in " + str(two) + ":2")
    assert set(_calls(make_calls)) <= {"--version"}


def test_recipe_needs_exactly_one_of_image_and_source(tmp_path: Path) -> None:
    (tmp_path / "bzImage").write_bytes(b"x")
    base = '[metadata]\nname = "t"\nversion = "1"\n[kernel]\n'
    both = tmp_path / "both.toml"
    both.write_text(base + 'image = "bzImage"\nsource = { dir = "." }\n')
    with pytest.raises(RecipeError) as e:
        load_recipe(both)
    assert e.value.render().endswith("[kernel] source: set only one of 'image' and 'source' [conflicting-keys]")
    neither = tmp_path / "neither.toml"
    neither.write_text(base)
    with pytest.raises(RecipeError, match="'image'.*'source'"):
        load_recipe(neither)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ('{ url = "https://example.org/linux.tar.xz" }', "url needs sha256"),
        ('{ dir = ".", tarball = "x" }', "exactly one of"),
        ('{ git = "https://example.org/linux.git" }', "git and rev go together"),
    ],
)
def test_source_table_is_validated(tmp_path: Path, source: str, message: str) -> None:
    (tmp_path / "x").write_bytes(b"")
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[metadata]\nname = "t"\nversion = "1"\n[kernel]\nsource = {source}\n')
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe)


def test_unsupported_arch_is_refused(tmp_path: Path) -> None:
    spec = KernelSpec(source=KernelSource(dir=tmp_path))
    with pytest.raises(InputError, match=r"riscv64 is not supported yet \(only x86_64, arm64\)"):
        build_kernel(spec, arch="riscv64", cache_root=tmp_path, source_date_epoch=0)


def stand_in_tree(tmp_path: Path, bzimage_recipe: str) -> Path:
    """A kernel-shaped tree whose Makefile has the config targets and the given bzImage
    recipe, so real make drives the build loop without minutes of compiling."""
    needs_tool("make")
    tree = tmp_path / "linux"
    tree.mkdir()
    (tree / "Kconfig").write_text("")
    (tree / "Makefile").write_text(
        "tinyconfig:\n\tprintf 'CONFIG_A=y\\n' > $(O)/.config\n"
        "olddefconfig:\n\t@true\n"
        "bzImage:\n" + bzimage_recipe
    )
    return tree


def test_build_failure_cites_the_log_and_the_first_error(tmp_path: Path) -> None:
    """A stand-in tree whose Makefile fails like a compile error does, run by real make."""
    tree = stand_in_tree(tmp_path, "\t@echo '  CC      init/main.o'\n"
                         "\t@echo 'init/main.c:1:1: error: expected declaration' >&2\n\t@exit 2\n")
    spec = KernelSpec(source=KernelSource(dir=tree), options={"A": "y"})
    with pytest.raises(ToolError) as e:
        build_kernel(spec, arch="x86_64", cache_root=tmp_path / "cache", source_date_epoch=0, use_ccache=False)
    assert e.value.code == "kernel-build-failed"
    m = e.value.message
    assert m.startswith("kernel: build failed: init/main.c:1:1: error: expected declaration (log: ")
    log_path = Path(m.split("(log: ", 1)[1].rstrip(")"))
    assert log_path.name == "build.log" and "error: expected declaration" in log_path.read_text()
    assert "error: expected declaration" in e.value.stderr_tail


def test_progress_command_and_outputs_on_a_stand_in_tree(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Progress lines, the logged command and output collection, without minutes of compiling."""
    tree = stand_in_tree(tmp_path,
                         "\t@for i in $$(seq 1 250); do echo \"  CC      obj$$i.o\"; done\n"
                         "\t@echo '  LD      vmlinux'\n"
                         "\t@mkdir -p $(O)/arch/x86/boot $(O)/include/config\n"
                         "\t@echo image > $(O)/arch/x86/boot/bzImage; echo elf > $(O)/vmlinux\n"
                         "\t@echo map > $(O)/System.map\n"
                         "\t@echo 9.9.9-test > $(O)/include/config/kernel.release\n"
                         "\t@echo \"$$KBUILD_BUILD_TIMESTAMP\" > $(O)/stamp\n")
    spec = KernelSpec(source=KernelSource(dir=tree), options={"A": "y"})
    caplog.set_level("DEBUG", logger="mkspawn")
    shown = io.StringIO()
    progress.bind(progress.PlainRenderer(shown))
    try:
        built = build_kernel(spec, arch="x86_64", cache_root=tmp_path / "cache", source_date_epoch=0,
                             use_ccache=False)
    finally:
        progress.bind(None)
    messages = [r.getMessage() for r in caplog.records]
    assert "kernel: compiling: 200 objects compiled" in messages
    assert "mkspawn: kernel: compile: linking vmlinux (250 objects compiled so far)" in shown.getvalue()
    # -v names the goals; only --debug (DEBUG) shows the whole command with its variables.
    assert "kernel: make bzImage" in [r.getMessage() for r in caplog.records if r.levelname == "INFO"]
    command = next(r.getMessage() for r in caplog.records
                   if r.getMessage().startswith("kernel: $ ") and r.getMessage().endswith(" bzImage"))
    assert next(r for r in caplog.records if r.getMessage() == command).levelname == "DEBUG"
    assert "'KBUILD_BUILD_TIMESTAMP=Thu Jan  1 00:00:00 UTC 1970'" in command
    assert f"make -C {tree} O={tmp_path / 'cache'}/kernel/build/" in command and "ARCH=x86_64 -j" in command
    assert built.release == "9.9.9-test" and built.image.read_text() == "image\n"
    assert built.config.read_text().splitlines()[-1] == "CONFIG_A=y"
    assert not built.cache_hit and not (tmp_path / "cache" / "kernel" / "build" / built.cache_key).exists()
    again = build_kernel(spec, arch="x86_64", cache_root=tmp_path / "cache", source_date_epoch=0)
    assert again.cache_hit and again.cache_key == built.cache_key, "ccache on or off does not change the key"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('CMDLINE = "console=ttyS0"', "CMDLINE: expected y, m, n, a number, or a double-quoted string"),
        ('CONFIG_SMP = "y"', "CONFIG_SMP: expected a Kconfig symbol without the CONFIG_ prefix"),
    ],
)
def test_inline_options_are_validated_with_their_line(tmp_path: Path, options: str, message: str) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[metadata]\nname = "t"\nversion = "1"\n[kernel]\nsource = {{ dir = "." }}\n'
                      f"[kernel.options]\nNR_CPUS = \"8\"\n{options}\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe)
    assert e.value.render().startswith(f"{recipe}:6: [kernel] options: {message}")


# --- cache entry integrity ---------------------------------------------------------------


def _stand_in_copying(tmp_path: Path, image: bytes) -> KernelSpec:
    """A stand-in tree whose make "builds" by copying a real bzImage into place."""
    (tmp_path / "prebuilt").write_bytes(image)
    tree = stand_in_tree(tmp_path,
                         "\t@mkdir -p $(O)/arch/x86/boot $(O)/include/config\n"
                         f"\t@cp {tmp_path / 'prebuilt'} $(O)/arch/x86/boot/bzImage\n"
                         "\t@printf 'ELF stand-in\\n' > $(O)/vmlinux; echo map > $(O)/System.map\n"
                         "\t@echo 9.8.7-synthetic > $(O)/include/config/kernel.release\n")
    return KernelSpec(source=KernelSource(dir=tree), options={"A": "y"})


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-512])


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("damage", "member"), [(_truncate, "image"), (_flip, "image"), (_flip, "vmlinux"),
                                                (_flip, "config")],
                         ids=["truncated-image", "bit-flipped-image", "bit-flipped-vmlinux", "edited-config"])
def test_damaged_cache_entry_is_rebuilt_not_served(tmp_path: Path, synthetic_bzimage: bytes,
                                                   caplog: pytest.LogCaptureFixture, damage: Callable[[Path], None],
                                                   member: str) -> None:
    spec = _stand_in_copying(tmp_path, synthetic_bzimage)
    cache = tmp_path / "cache"
    built = build_kernel(spec, arch="x86_64", cache_root=cache, source_date_epoch=0, use_ccache=False)
    entry = json.loads((built.image.parent / "entry.json").read_text())
    assert entry["sha256"]["image"] == hashlib.sha256(synthetic_bzimage).hexdigest()
    assert sorted(entry["sha256"]) == ["System.map", "build.log", "config", "image", "vmlinux"]
    damage(built.image.parent / member)
    caplog.set_level("INFO", logger="mkspawn")
    again = build_kernel(spec, arch="x86_64", cache_root=cache, source_date_epoch=0, use_ccache=False)
    assert not again.cache_hit
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and f"is damaged ({member} has sha256 " in warnings[0]  # the hit and the locked re-check
    assert again.image.read_bytes() == synthetic_bzimage
    assert build_kernel(spec, arch="x86_64", cache_root=cache, source_date_epoch=0).cache_hit


def test_extra_file_in_a_cache_entry_is_damage(tmp_path: Path, synthetic_bzimage: bytes) -> None:
    spec = _stand_in_copying(tmp_path, synthetic_bzimage)
    cache = tmp_path / "cache"
    built = build_kernel(spec, arch="x86_64", cache_root=cache, source_date_epoch=0, use_ccache=False)
    (built.image.parent / "image.orig").write_bytes(b"left behind")
    assert not build_kernel(spec, arch="x86_64", cache_root=cache, source_date_epoch=0).cache_hit


@pytest.mark.parametrize(("damage", "hit"), [(None, True), (_truncate, False)], ids=["sound", "truncated"])
def test_entry_from_before_digests_is_adopted_only_if_its_image_is_sound(
        tmp_path: Path, synthetic_bzimage: bytes, damage: Callable[[Path], None] | None, hit: bool) -> None:
    spec = _stand_in_copying(tmp_path, synthetic_bzimage)
    cache = tmp_path / "cache"
    built = build_kernel(spec, arch="x86_64", cache_root=cache, source_date_epoch=0, use_ccache=False)
    entry_path = built.image.parent / "entry.json"
    legacy = json.loads(entry_path.read_text())
    del legacy["sha256"]
    entry_path.write_text(json.dumps(legacy))
    if damage is not None:
        damage(built.image)
    again = build_kernel(spec, arch="x86_64", cache_root=cache, source_date_epoch=0, use_ccache=False)
    assert again.cache_hit is hit
    assert again.image.read_bytes() == synthetic_bzimage
    assert "sha256" in json.loads(entry_path.read_text())  # recorded from now on
