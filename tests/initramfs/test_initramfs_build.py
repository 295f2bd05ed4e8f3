"""build_initramfs from recipe specs: reproducibility, ELF closures, errors, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from mkimage.commands.initramfs import command
from mkimage.errors import InputError, RecipeError
from mkimage.initramfs.build import build_initramfs
from mkimage.initramfs.reader import read_initramfs
from mkimage.recipe.load import load_recipe
from mkimage.recipe.model import (
    Compression,
    FileItem,
    InitramfsSpec,
    NodeItem,
    NodeType,
    SymlinkItem,
    TreeItem,
)
from tests.conftest import missing, needs_tool
from tests.initramfs.initramfs_helpers import cpio_extract, cpio_table

EPOCH = 1_600_000_000
PYTHON = Path("/usr/bin/python3.11")


def write_tree(root: Path, order: list[str]) -> None:
    """The same files and modes, created in the order given (so inode and dirent order differ)."""
    contents = {"a/one": b"1\n", "a/two": b"2\n" * 1000, "b/three": os.urandom(0) + b"3", "c/d/e/four": b"4" * 70000,
                "top": b"top\n"}
    for name in order:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(contents[name])
        os.chmod(path, 0o640 if name.endswith("one") else 0o755)
    for directory in ("a", "b", "c", "c/d", "c/d/e"):
        os.chmod(root / directory, 0o755)
    os.chmod(root, 0o755)
    os.symlink("a/one", root / "link")


def spec_for(tree: Path, extra: Path, compression: Compression) -> InitramfsSpec:
    return InitramfsSpec(
        compression=compression,
        command="echo hello",
        files=[FileItem(extra, "/etc/extra.conf", 0o600)],
        trees=[TreeItem(tree, "/srv/data")],
        nodes=[NodeItem("dev/null", NodeType.CHAR, 1, 3, 0o666), NodeItem("run/ctl", NodeType.FIFO)],
        symlinks=[SymlinkItem("etc/alias", "extra.conf")],
    )


def tmpfs_dir() -> Path:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        missing("no /dev/shm tmpfs")
    return Path(tempfile.mkdtemp(dir=shm, prefix="mkspawn-test-"))


@pytest.mark.parametrize("compression", [Compression.NONE, Compression.GZIP, Compression.ZSTD])
def test_builds_from_tmpfs_and_ext4_are_byte_identical(tmp_path: Path, compression: Compression) -> None:
    results = []
    shm = tmpfs_dir()
    try:
        for base, order in ((shm, ["top", "c/d/e/four", "b/three", "a/two", "a/one"]),
                            (tmp_path, ["a/one", "a/two", "b/three", "c/d/e/four", "top"])):
            write_tree(base / "tree", order)
            (base / "extra").write_text("k=v\n")
            out = base / "out" / "initrd.img"
            results.append(build_initramfs(spec_for(base / "tree", base / "extra", compression), out,
                                           source_date_epoch=EPOCH))
            assert hashlib.sha256(out.read_bytes()).hexdigest() == results[-1].sha256
    finally:
        shutil.rmtree(shm)
    assert results[0].sha256 == results[1].sha256 and results[0].size == results[1].size
    assert results[0].compression is compression and results[0].media_type.startswith("application/x-cpio")
    assert len(results[0].inputs) == 8  # five tree files, extra.conf, the init and busybox
    assert "busybox" in results[0].tools


def test_tree_files_nodes_and_symlinks_land_as_asked(tmp_path: Path) -> None:
    needs_tool("cpio")
    write_tree(tmp_path / "tree", ["a/one", "a/two", "b/three", "c/d/e/four", "top"])
    (tmp_path / "extra").write_text("k=v\n")
    out = tmp_path / "initrd.cpio"
    build_initramfs(spec_for(tmp_path / "tree", tmp_path / "extra", Compression.NONE), out, source_date_epoch=EPOCH)
    table = cpio_table(out)
    assert table["dev/console"] == ("crw-------", "0/0", "5,1", None)
    assert table["dev/null"] == ("crw-rw-rw-", "0/0", "1,3", None)
    assert table["run/ctl"][0] == "prw-------"
    assert table["etc/extra.conf"][0] == "-rw-------"
    assert table["etc/alias"][3] == "extra.conf"
    assert table["srv/data/a/one"][0] == "-rw-r-----" and table["srv/data/top"][0] == "-rwxr-xr-x"
    assert table["srv/data/link"] == ("lrwxrwxrwx", "0/0", "5", "a/one")
    assert table["init"][0] == "-rwxr-xr-x" and table["bin/sh"][3] == "/bin/busybox"
    assert {owner for _, owner, _, _ in table.values()} == {"0/0"}
    segment, = read_initramfs(out.read_bytes())
    command_file = next(m for m in segment.members if m.name == b"etc/mkspawn/command")
    assert command_file.data == b"echo hello\n"


def run_in_chroot(root: Path, *argv: str) -> str:
    """Run a program inside an extracted initramfs, with /proc mounted as the default
    init mounts it (ld.so reads /proc/self/exe to expand $ORIGIN)."""
    if os.geteuid() != 0:
        missing("chroot needs root")
    (root / "proc").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(root / "proc")], check=True)
    try:
        done = subprocess.run(["chroot", str(root), *argv], capture_output=True, timeout=60, check=False)
    finally:
        subprocess.run(["umount", str(root / "proc")], check=True)
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode()


def test_python_closure_is_complete_and_runs_in_a_chroot(tmp_path: Path) -> None:
    needs_tool("cpio")
    if not PYTHON.is_file():
        missing(f"{PYTHON} is not installed (python3.11-minimal)")
    # The interpreter needs its codec modules and the os.py landmark to start (environment.md §9).
    stdlib = Path("/usr/lib/python3.11")
    spec = InitramfsSpec(binaries=[PYTHON, Path("/usr/bin/env")], busybox=False, init=Path("/usr/bin/env"),
                         trees=[TreeItem(stdlib / "encodings", "/usr/lib/python3.11/encodings")],
                         files=[FileItem(stdlib / "os.py", "/usr/lib/python3.11/os.py")],
                         compression=Compression.NONE)
    out = tmp_path / "py.cpio"
    build_initramfs(spec, out, source_date_epoch=EPOCH)
    names = {m.name for m in read_initramfs(out.read_bytes())[0].members}
    for needed in (b"lib64/ld-linux-x86-64.so.2", b"lib/x86_64-linux-gnu/libc.so.6", b"lib/x86_64-linux-gnu/libm.so.6",
                   b"lib/x86_64-linux-gnu/libz.so.1", b"lib/x86_64-linux-gnu/libexpat.so.1"):
        assert needed in names
    cpio_extract(out, tmp_path / "root")
    printed = run_in_chroot(tmp_path / "root", str(PYTHON), "-S", "-I", "-c",
                            "import sys, zlib; print('py', sys.version_info[0], zlib.crc32(b'mkspawn'))")
    assert printed.split() == ["py", "3", str(__import__("zlib").crc32(b"mkspawn"))]
    assert "PATH" not in run_in_chroot(tmp_path / "root", "/usr/bin/env", "-i", "X=1")


def test_origin_runpath_and_symlink_chains_are_followed(tmp_path: Path, cc: str) -> None:
    needs_tool("cpio")
    app = tmp_path / "opt" / "app"
    (app / "lib").mkdir(parents=True)
    (app / "bin").mkdir()
    (tmp_path / "greet.c").write_text('#include <stdio.h>\nvoid greet(void){puts("greetings from libgreet");}\n')
    (tmp_path / "main.c").write_text("void greet(void);\nint main(void){greet();return 0;}\n")
    subprocess.run([cc, "-shared", "-fPIC", "-Wl,-soname,libgreet.so.1", "-o", str(app / "lib/libgreet.so.1.0"),
                    str(tmp_path / "greet.c")], check=True)
    os.symlink("libgreet.so.1.0", app / "lib/libgreet.so.1")
    subprocess.run([cc, "-o", str(app / "bin/hello"), str(tmp_path / "main.c"), str(app / "lib/libgreet.so.1"),
                    "-Wl,--enable-new-dtags,-rpath,$ORIGIN/../lib"], check=True)
    spec = InitramfsSpec(binaries=[app / "bin/hello"], compression=Compression.GZIP)
    out = tmp_path / "hello.img"
    build_initramfs(spec, out, source_date_epoch=EPOCH)
    members = {m.name: m for m in read_initramfs(out.read_bytes())[0].members}
    lib = os.fsencode(app / "lib").lstrip(b"/")
    assert members[lib + b"/libgreet.so.1"].target == b"libgreet.so.1.0"
    assert members[lib + b"/libgreet.so.1.0"].size > 0
    with open(out, "rb") as f:
        gunzipped = subprocess.run(["gzip", "-dc"], stdin=f, capture_output=True, check=True).stdout
    (tmp_path / "plain.cpio").write_bytes(gunzipped)
    cpio_extract(tmp_path / "plain.cpio", tmp_path / "root")
    assert run_in_chroot(tmp_path / "root", str(app / "bin/hello")) == "greetings from libgreet\n"


# ---- errors: one clear line, no output file -------------------------------------

def test_missing_source_file_names_the_key_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "x.img"
    spec = InitramfsSpec(files=[FileItem(tmp_path / "gone.txt", "/etc/gone")])
    with pytest.raises(RecipeError, match=r".*gone\.txt: No such file") as info:
        build_initramfs(spec, out, source_date_epoch=EPOCH)
    assert info.value.key == "initramfs.files[0].src"
    assert "\n" not in info.value.render()
    assert list(tmp_path.iterdir()) == []


def test_dotdot_in_dst_is_refused_at_layout_too(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    spec = InitramfsSpec(files=[FileItem(tmp_path / "f", "/etc/../../escape")])
    with pytest.raises(RecipeError, match=r"'\.\.'") as info:
        build_initramfs(spec, tmp_path / "out" / "x.img", source_date_epoch=EPOCH)
    assert (info.value.key, info.value.code) == ("initramfs.files[0].dst", "bad-name")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_tree_name_beyond_path_max_is_a_recipe_error_at_the_trees_line(tmp_path: Path) -> None:
    (tmp_path / "tree" / "/".join(["d" * 200] * 6)).mkdir(parents=True)
    dst = "/".join(["x" * 200] * 15)  # a legal dst; only with the tree's names is it past PATH_MAX
    recipe = write_recipe(tmp_path, f'busybox = false\ninit = "bzImage"\n\n[[initramfs.trees]]\nsrc = "tree"\n'
                                    f'dst = "{dst}"\n')
    out = tmp_path / "x.img"
    with pytest.raises(RecipeError) as info:
        build_initramfs(load_recipe(recipe).initramfs, out, source_date_epoch=EPOCH)
    assert info.value.exit_code == 2 and info.value.code == "bad-name"
    assert info.value.render().startswith(f"{recipe}:13: [initramfs] trees[0]: entry name longer than 4095 bytes: ")
    assert not out.exists()


def test_a_node_under_a_symlink_is_a_recipe_error_at_the_nodes_line(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, 'busybox = false\ninit = "bzImage"\n'
                          'symlinks = [{ path = "/run", target = "/tmp" }]\n'
                          'nodes = [{ path = "/run/ctl", type = "p" }]\n')
    with pytest.raises(RecipeError) as info:
        build_initramfs(load_recipe(recipe).initramfs, tmp_path / "x.img", source_date_epoch=EPOCH)
    assert info.value.render() == (f"{recipe}:13: [initramfs] nodes[0].path: run/ctl would be inside run, which "
                                   "[initramfs] symlinks[0].path places as a symlink [path-conflict]")
    assert info.value.exit_code == 2


def write_recipe(tmp_path: Path, initramfs_toml: str) -> Path:
    (tmp_path / "bzImage").write_bytes(b"not really a kernel")
    recipe = tmp_path / "spawn.toml"
    recipe.write_text('[metadata]\nname = "t"\nversion = "1"\nsource_date_epoch = 1600000000\n\n'
                      '[kernel]\nimage = "bzImage"\n\n[initramfs]\n' + initramfs_toml)
    return recipe


def test_dotdot_in_dst_is_a_recipe_error_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "motd").write_text("hi\n")
    recipe = write_recipe(tmp_path, '\n[[initramfs.files]]\nsrc = "motd"\ndst = "/etc/../../motd"\n')
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe)
    rendered = info.value.render()
    assert "spawn.toml:" in rendered and "'..'" in rendered and "dst" in rendered


def test_compression_the_kernel_lacks_is_refused(tmp_path: Path) -> None:
    config = tmp_path / ".config"
    config.write_text("CONFIG_BLK_DEV_INITRD=y\nCONFIG_RD_GZIP=y\n# CONFIG_RD_ZSTD is not set\nCONFIG_RD_XZ=y\n")
    out = tmp_path / "x.img"
    with pytest.raises(InputError, match=r"zstd: .*CONFIG_RD_ZSTD=y.*usable: xz, gzip, none") as info:
        build_initramfs(InitramfsSpec(compression=Compression.ZSTD), out, source_date_epoch=EPOCH,
                        kernel_config=config)
    assert info.value.code == "unsupported-compression"
    assert not out.exists()
    auto = build_initramfs(InitramfsSpec(), out, source_date_epoch=EPOCH, kernel_config=config)
    assert auto.compression is Compression.XZ


# ---- the CLI ----------------------------------------------------------------------

def test_cli_builds_then_lists_early_and_compressed_segments(tmp_path: Path) -> None:
    (tmp_path / "GenuineIntel.bin").write_bytes(b"\x01" * 48)
    recipe = write_recipe(tmp_path, 'compression = "zstd"\nmicrocode = ["GenuineIntel.bin"]\ncommand = "true"\n')
    runner = CliRunner()
    built = runner.invoke(command, [str(recipe), "-o", str(tmp_path / "initrd.img")], catch_exceptions=False)
    assert built.exit_code == 0, built.output
    assert built.output.count("\n") == 1 and "zstd" in built.output
    listed = runner.invoke(command, ["--list", str(tmp_path / "initrd.img")], catch_exceptions=False)
    assert listed.exit_code == 0
    assert "# segment 0: none" in listed.output and "# segment 1: zstd" in listed.output
    assert "0 -rw-r--r-- 0/0         48 kernel/x86/microcode/GenuineIntel.bin" in listed.output
    assert "1 crw------- 0/0        5,1 dev/console" in listed.output
    as_json = json.loads(runner.invoke(command, ["--list", str(tmp_path / "initrd.img"), "--json"]).output)
    assert [s["compression"] for s in as_json["segments"]] == ["none", "zstd"]
    assert as_json["segments"][1]["members"][0]["name"] == "bin"


def test_cli_builds_a_recipe_without_a_kernel_section(tmp_path: Path) -> None:
    (tmp_path / "init").write_text("#!/bin/sh\n")
    recipe = tmp_path / "initramfs-only.toml"
    recipe.write_text('[metadata]\nname = "t"\nversion = "1"\n\n[initramfs]\nbusybox = false\ninit = "init"\n')
    built = CliRunner().invoke(command, [str(recipe), "-o", str(tmp_path / "initrd.img")], catch_exceptions=False)
    assert built.exit_code == 0, built.output
    names = [m.name for s in read_initramfs((tmp_path / "initrd.img").read_bytes()) for m in s.members]
    assert names == [b"dev", b"dev/console", b"init"]


def test_cli_needs_one_form() -> None:
    result = CliRunner().invoke(command, [])
    assert result.exit_code == 2 and "expected RECIPE -o FILE, or --list FILE" in result.output


def test_recipe_tables_load_into_typed_items(tmp_path: Path) -> None:
    (tmp_path / "motd").write_text("hi\n")
    recipe = write_recipe(tmp_path, 'compression = "lz4"\nbinaries = ["/usr/bin/env"]\n'
                          '[[initramfs.files]]\nsrc = "motd"\ndst = "/etc/motd"\nmode = 0o600\n'
                          '[[initramfs.trees]]\nsrc = "."\ndst = "/srv"\n'
                          '[[initramfs.nodes]]\npath = "/dev/null"\ntype = "c"\nmajor = 1\nminor = 3\nmode = 0o666\n'
                          '[[initramfs.nodes]]\npath = "/run/ctl"\ntype = "p"\nmode = "0640"\n'
                          '[[initramfs.nodes]]\npath = "/run/sock"\ntype = "s"\nmode = 7\n'
                          '[[initramfs.symlinks]]\npath = "/etc/issue"\ntarget = "motd"\n')
    spec = load_recipe(recipe).initramfs
    assert spec.files == [FileItem(tmp_path / "motd", "/etc/motd", 0o600)]
    assert spec.trees == [TreeItem(tmp_path, "/srv")]
    assert spec.nodes == [NodeItem("/dev/null", NodeType.CHAR, 1, 3, 0o666),
                          NodeItem("/run/ctl", NodeType.FIFO, mode=0o640),
                          NodeItem("/run/sock", NodeType.SOCKET, mode=7)]
    assert spec.symlinks == [SymlinkItem("/etc/issue", "motd")]
    assert spec.compression is Compression.LZ4 and spec.binaries == [Path("/usr/bin/env")]
