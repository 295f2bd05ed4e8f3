"""The Kconfig model: fragments, conflicts, merging, the dropped-option check and its
explanations — on synthetic text and on the real linux-source-6.12 tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mkimage.kernel.build import ARCHES, configure, kbuild_env
from mkimage.kernel.kconfig import (
    ConfigRequest,
    KernelConfigError,
    Requested,
    explain,
    find_dropped,
    merge_into,
    parse_config,
    scan_kconfig,
)
from mkimage.kernel.source import materialise_source, source_identity
from mkimage.recipe.model import KernelSource, KernelSpec
from tests.conftest import missing, needs_tool

REPO = Path(__file__).resolve().parents[2]
FRAGMENTS = REPO / "kernel"
DEBIAN_SOURCE = Path("/usr/src/linux-source-6.12.tar.xz")
CACHE_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mkspawn"


def test_fragment_syntax() -> None:
    got = parse_config('CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C="x y"\nCONFIG_D=0x10\n# a comment\n', "f")
    assert {k: v.value for k, v in got.items()} == {"A": "y", "B": "n", "C": '"x y"', "D": "0x10"}
    assert got["B"].origin == "f:2"


@pytest.mark.parametrize("line", ["CONFIG_A=maybe", "KEXEC=y", 'CONFIG_S="unterminated'])
def test_bad_fragment_lines_are_errors(line: str) -> None:
    with pytest.raises(KernelConfigError, match="f:1"):
        parse_config(line + "\n", "f")


def test_conflicting_fragments_name_both() -> None:
    request = ConfigRequest()
    request.add_fragment(parse_config("CONFIG_SMP=y\nCONFIG_NR_CPUS=8\n", "one.config"))
    request.add_fragment(parse_config("CONFIG_NR_CPUS=8\n", "same.config"))  # agreeing is fine
    with pytest.raises(KernelConfigError) as e:
        request.add_fragment(parse_config("# CONFIG_SMP is not set\n", "two.config"))
    assert e.value.code == "config-conflict"
    assert e.value.message == "conflicting fragments: CONFIG_SMP=y in one.config:1 but n in two.config:1"


def test_inline_options_override_fragments() -> None:
    request = ConfigRequest()
    request.add_fragment(parse_config("CONFIG_NR_CPUS=8\n", "f"))
    request.add_options({"NR_CPUS": "4", "CMDLINE": '"console=ttyS0"'}, "[kernel.options]")
    assert request.symbols["NR_CPUS"] == Requested("4", "[kernel.options]")
    with pytest.raises(KernelConfigError, match="quoted string"):
        request.add_options({"CMDLINE": "console=ttyS0"}, "[kernel.options]")


def test_merge_replaces_base_lines_and_check_finds_drops() -> None:
    request = ConfigRequest()
    request.add_fragment(parse_config("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_E=m\n", "f"))
    merged = merge_into("CONFIG_A=n\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=y\n", request)
    assert parse_config(merged)["A"].value == "y" and parse_config(merged)["B"].value == "n"
    assert merged.count("CONFIG_B") == 1 and "CONFIG_D=y" in merged
    final = "CONFIG_A=y\nCONFIG_E=y\n"  # C vanished, E was forced to y (no MODULES)
    dropped = {d.symbol: d.actual for d in find_dropped(request, final)}
    assert dropped == {"C": "n", "E": "y"}


def test_kconfig_scan_reports_depends_if_blocks_menus_and_selects(tmp_path: Path) -> None:
    (tmp_path / "arch" / "x86").mkdir(parents=True)
    (tmp_path / "arch" / "arm").mkdir(parents=True)
    (tmp_path / "Kconfig").write_text(
        'menu "Stuff"\n\tdepends on MENUDEP\n\n'
        "if OUTER\n"
        'config WANTED\n\tbool "wanted"\n\tdepends on A && !B\n\thelp\n\t  config FAKE in help text\n'
        "endif\n"
        "endmenu\n"
        "config HIDDEN\n\tbool\n\n"
        'config PICKER\n\tbool "picker"\n\tselect HIDDEN\n'
    )
    (tmp_path / "arch" / "arm" / "Kconfig").write_text('config WANTED\n\tbool "arm"\n\tdepends on ARMONLY\n')
    info, selected_by = scan_kconfig(str(tmp_path), "x86", ["WANTED", "HIDDEN", "FAKE"])
    assert info["WANTED"].depends == ["MENUDEP", "OUTER", "A && !B"]
    assert info["WANTED"].has_prompt and not info["HIDDEN"].has_prompt
    assert "FAKE" not in info
    assert selected_by == {"HIDDEN": ["PICKER"]}

    request = ConfigRequest()
    request.add_fragment(parse_config("CONFIG_WANTED=y\nCONFIG_HIDDEN=y\nCONFIG_TYPO=y\n", "f"))
    final = "CONFIG_A=y\nCONFIG_OUTER=y\n"
    why = {d.symbol: d.why for d in explain(find_dropped(request, final), str(tmp_path), "x86", final)}
    assert why["WANTED"] == "depends on (MENUDEP) && (OUTER) && (A && !B) [now MENUDEP=n, OUTER=y, A=y, B=n]"
    assert why["HIDDEN"] == "it has no prompt and cannot be set directly; selected by PICKER"
    assert "no 'config TYPO'" in why["TYPO"]


def test_shipped_fragments_parse_and_combine() -> None:
    request = ConfigRequest()
    for name in ("spawn-minimal", "kexec-host", "kexec-sig"):
        request.add_fragment(parse_config((FRAGMENTS / f"{name}.config").read_text(), name))
    assert request.symbols["KEXEC_FILE"].value == "y"
    assert request.symbols["KEXEC"].value == "n"
    assert parse_config((FRAGMENTS / "multikernel-host.config").read_text())["MULTIKERNEL"].value == "y"


# ---- against the real 6.12 tree (config steps only: seconds, no compile) ---------------

@pytest.fixture(scope="module")
def tree_612() -> Path:
    needs_tool("make", "gcc", "flex", "bison", "tar")
    if not DEBIAN_SOURCE.is_file():
        missing(f"{DEBIAN_SOURCE} is missing (Debian package linux-source-6.12)")
    src = KernelSource(tarball=DEBIAN_SOURCE)
    return materialise_source(src, source_identity(src, cache_root=CACHE_ROOT), cache_root=CACHE_ROOT,
                              mirrors={}).tree


def _configure(tree: Path, build_dir: Path, spec: KernelSpec, fragments: list[Path]) -> str:
    request = ConfigRequest()
    for f in fragments:
        request.add_fragment(parse_config(f.read_text(), f.name))
    if spec.trusted_keys is not None:
        request.add_options({"SYSTEM_TRUSTED_KEYS": '"mkspawn-trusted-keys.pem"'}, "[kernel] trusted_keys")
    make = ["make", "-C", str(tree), f"O={build_dir}", "ARCH=x86_64"]
    return configure(spec, ARCHES["x86_64"], tree, build_dir, request, make, kbuild_env(0))


@pytest.mark.slow
def test_kexec_sig_without_the_fs_verity_workaround_is_caught(tree_612: Path, tmp_path: Path) -> None:
    """environment.md §10's silent drop: without something selecting SYSTEM_DATA_VERIFICATION
    the two verify options vanish in olddefconfig.  The check must name them and say why."""
    text = (FRAGMENTS / "kexec-sig.config").read_text()
    stripped = tmp_path / "kexec-sig-no-verity.config"
    stripped.write_text("".join(line for line in text.splitlines(True) if "FS_VERITY" not in line))
    spec = KernelSpec(fragments=[stripped])
    with pytest.raises(KernelConfigError) as e:
        _configure(tree_612, tmp_path / "o", spec, [FRAGMENTS / "spawn-minimal.config", stripped])
    msg = e.value.message
    assert e.value.code == "config-dropped"
    assert "CONFIG_KEXEC_BZIMAGE_VERIFY_SIG: requested y, got n (kexec-sig-no-verity.config:" in msg
    assert "CONFIG_SIGNED_PE_FILE_VERIFICATION: requested y, got n" in msg
    assert "SYSTEM_DATA_VERIFICATION=n" in msg
    assert not (tmp_path / "o" / "vmlinux").exists()


@pytest.mark.slow
def test_shipped_kexec_sig_fragment_keeps_every_option(tree_612: Path, tmp_path: Path) -> None:
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    spec = KernelSpec(trusted_keys=pem)
    final = _configure(tree_612, tmp_path / "o", spec,
                       [FRAGMENTS / "spawn-minimal.config", FRAGMENTS / "kexec-sig.config"])
    values = {k: v.value for k, v in parse_config(final).items()}
    assert values["KEXEC_BZIMAGE_VERIFY_SIG"] == "y" and values["EFI_STUB"] == "y"
    assert values["SYSTEM_TRUSTED_KEYS"] == '"mkspawn-trusted-keys.pem"'
    assert (tmp_path / "o" / "mkspawn-trusted-keys.pem").read_bytes() == pem.read_bytes()


@pytest.mark.slow
def test_unknown_symbol_is_reported_as_such(tree_612: Path, tmp_path: Path) -> None:
    frag = tmp_path / "mk.config"
    frag.write_text("CONFIG_MULTIKERNEL=y\n")
    with pytest.raises(KernelConfigError, match=r"CONFIG_MULTIKERNEL: requested y, got n .*no 'config MULTIKERNEL'"):
        _configure(tree_612, tmp_path / "o", KernelSpec(fragments=[frag]), [frag])
