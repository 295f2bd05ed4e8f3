"""Start-up stays light: `--version`, `--help` and the read verbs import only what they use.

Wall time depends on the machine and its load, so the guard is the set of modules a
fresh interpreter holds after the command ran: the heavy third-party packages (and the
stages behind them) must be absent where a verb has no use for them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mkimage import cli
from tests.conftest import run_mkspawn

# Run the real entry point in a fresh interpreter, then list what it imported.
PROBE = """
import json, sys
from mkimage.cli import main
try:
    main(sys.argv[2:])
except SystemExit as e:
    code = e.code
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""
HEAVY = {"cryptography", "zstandard", "lz4", "elftools", "requests", "urllib3", "rich"}
# What a bundle's signatures need.
VERIFY_NEEDS = {"cryptography"}
# Cut from the read path (issue 15), 5-20 ms each: pyelftools is for ELF kernels only,
# x509 for certificates in the trust store only, the handover decoder for bundles that
# carry one, and the recipe model's dataclasses not at all (a manifest names only the
# arch and ABI profile, from mkimage.recipe.targets).
READ_PATH_CUT = {"elftools", "cryptography.x509", "mkimage.recipe.model", "mkimage.recipe.load",
                 "mkimage.handover.binding", "mkimage.devicetree.dts"}
KEYS = Path(__file__).parent / "data" / "keys"
BUILD_SIDE = {"mkimage.pipeline", "mkimage.system", "mkimage.commands.system", "mkimage.bundle.sign",
              "mkimage.recipe.load", "mkimage.evidence", "mkimage.reproduce"}
BUILD_STAGES = {"mkimage.initramfs", "mkimage.acpi", "mkimage.qemu", "mkimage.registry", "mkimage.loader"}


def imported_by(tmp_path: Path, *args: object) -> tuple[int, set[str]]:
    out = tmp_path / "modules.json"
    subprocess.run([sys.executable, "-c", PROBE, out, *map(str, args)], capture_output=True, text=True,
                   check=False, timeout=120, cwd=tmp_path)
    result = json.loads(out.read_text())
    return result["code"], set(result["modules"])


def tops(modules: set[str]) -> set[str]:
    return {m.split(".")[0] for m in modules}


@pytest.mark.parametrize("args", [["--version"], ["--help"]], ids=["version", "help"])
def test_version_and_help_import_no_command(tmp_path: Path, args: list[str]) -> None:
    code, modules = imported_by(tmp_path, *args)
    assert code == 0
    assert tops(modules) & HEAVY == set()
    assert {m for m in modules if m.startswith("mkimage")} <= {"mkimage", "mkimage.cli", "mkimage.errors"}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, synthetic_kernel: Path) -> Path:
    """A signed bzImage bundle, so verify walks its whole path: signatures, roles, evidence, digests."""
    work = tmp_path_factory.mktemp("startup")
    (work / "r.toml").write_text(f'[metadata]\nname = "s"\nversion = "1"\n[kernel]\nimage = "{synthetic_kernel}"\n'
                                 'cmdline = "console=ttyS0"\n')
    done = run_mkspawn("build", work / "r.toml", "-o", work / "s.mkb", "--key", KEYS / "test-ed25519.pem")
    assert done.returncode == 0, done.stderr
    return work / "s.mkb"


@pytest.mark.parametrize("verb", ["verify", "inspect"])
def test_read_verbs_skip_compressors_and_network(tmp_path: Path, bundle: Path, verb: str) -> None:
    (tmp_path / "trust").mkdir()
    shutil.copy(KEYS / "test-ed25519.pub.pem", tmp_path / "trust")
    code, modules = imported_by(tmp_path, verb, bundle, "--trust", tmp_path / "trust")
    assert code == 0
    assert tops(modules) & HEAVY <= VERIFY_NEEDS
    assert modules & READ_PATH_CUT == set()
    # Reading a bundle needs neither the build side nor signing, nor the stages that only build or boot.
    assert modules & BUILD_SIDE == set()
    assert {".".join(m.split(".")[:2]) for m in modules} & BUILD_STAGES == set()


def test_every_exported_command_has_one_row() -> None:
    import importlib

    rows = {verb: module for verb, module, _help in cli.COMMANDS}
    assert len(rows) == len(cli.COMMANDS), "a verb is listed twice"
    exported = {}
    for module in sorted(set(rows.values())):
        command = importlib.import_module(f"mkimage.commands.{module}").command
        for c in command if isinstance(command, (list, tuple)) else [command]:
            exported[c.name] = module
    assert exported == rows


def test_lazy_verbs_keep_their_own_help() -> None:
    for verb, _module, summary in cli.COMMANDS:
        command = cli.load_command(verb)
        assert command is not None and command.name == verb
        assert summary.endswith(".") and len(summary) <= 70
        assert command.help  # the verb's own --help stays its full docstring
    assert cli.load_command("no-such-verb") is None


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_and_verbs(tmp_path: Path, shell: str) -> None:
    env = {"PATH": "/usr/bin:/bin", "_MKSPAWN_COMPLETE": f"{shell}_source"}
    source = subprocess.run([sys.executable, "-m", "mkimage"], env=env, capture_output=True, text=True, timeout=60)
    assert source.returncode == 0 and "_MKSPAWN_COMPLETE" in source.stdout
    env = {"PATH": "/usr/bin:/bin", "_MKSPAWN_COMPLETE": "bash_complete", "COMP_WORDS": "mkspawn ve",
           "COMP_CWORD": "1"}
    done = subprocess.run([sys.executable, "-m", "mkimage"], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["plain,verify"]


PACK_PROBE = """
import json, sys
from pathlib import Path
from mkimage.initramfs.newc import write_archive
from mkimage.initramfs.userland import check_machine, tree_entries
from mkimage.recipe.targets import Arch
check_machine(Path("/bin/true"), Arch.X86_64, "initramfs.binaries[0]")
with open(sys.argv[2], "wb") as out:
    write_archive(tree_entries(Path(sys.argv[3]), "/", "bench", None), out, source_date_epoch=0)
with open(sys.argv[1], "w") as f:
    json.dump(sorted(sys.modules), f)
"""


def test_packing_a_tree_loads_no_elf_parser_nor_recipe_model(tmp_path: Path) -> None:
    """What bench/initramfs.py's packer starts with, and the e_machine check every build
    makes: pyelftools' parser (~30 ms) is for library closures only; child processes
    (mkimage.run) and shipped assets for a recipe's userland only."""
    tree = tmp_path / "tree"
    (tree / "bin").mkdir(parents=True)
    (tree / "bin" / "hello").write_text("#!/bin/sh\necho hi\n")
    out = tmp_path / "modules.json"
    done = subprocess.run([sys.executable, "-c", PACK_PROBE, out, tmp_path / "out.cpio", tree], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    modules = set(json.loads(out.read_text()))
    assert {m for m in modules if m.startswith(("elftools.elf", "elftools.construct", "elftools.dwarf"))} == set()
    assert {"mkimage.recipe.model", "mkimage.run", "mkimage.assets"} & modules == set()
    assert b"bin/hello" in (tmp_path / "out.cpio").read_bytes()


# What only reading a bundle back needs; a build signs with make_signature and writes.
READ_SIDE = {"mkimage.bundle.verify", "mkimage.bundle.attestations", "mkimage.bundle.system_manifest",
             "mkimage.bundle.roles", "cryptography.x509"}


def test_build_loads_no_reading_side_nor_elf_parser(tmp_path: Path, synthetic_kernel: Path) -> None:
    """The no-op build's start-up (issue 15): a bzImage recipe, signed, built twice."""
    (tmp_path / "r.toml").write_text(f'[metadata]\nname = "s"\nversion = "1"\n[kernel]\nimage = "{synthetic_kernel}"\n'
                                     'cmdline = "console=ttyS0"\n')
    for _ in range(2):
        code, modules = imported_by(tmp_path, "build", tmp_path / "r.toml", "-o", tmp_path / "s.mkb",
                                    "--key", KEYS / "test-ed25519.pem")
        assert code == 0
        assert modules & READ_SIDE == set()
        assert {m for m in modules if m.startswith(("elftools.elf", "elftools.construct"))} == set()
        assert "ctypes" not in modules  # asked for liblzma's version only when compressing with xz
        assert "http.client" not in modules  # the build farm's HTTP probe, for a remote cache only
