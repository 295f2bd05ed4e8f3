"""[acpi] tables: iasl compiles them, the kernel's checks are applied, and a real kernel
installs them from the initrd's early segment."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from mkimage.acpi.build import EARLY_DIR, AcpiConfigError, build_acpi, early_files
from mkimage.acpi.tables import decode_table
from mkimage.devicetree.compile import SourceError
from mkimage.errors import FormatError
from mkimage.initramfs.build import build_initramfs
from mkimage.recipe.model import Compression, InitramfsSpec
from tests.conftest import missing, needs_tool
from tests.devicetree.dt_helpers import load

OEM_TABLE_ID = "MKSPAWN7"
GOOD_ASL = f"""\
DefinitionBlock ("", "SSDT", 2, "MKSPWN", "{OEM_TABLE_ID}", 0x00000001)
{{
    Name (MKSP, 0x4D4B)
}}
"""
BAD_ASL = GOOD_ASL.replace("Name (MKSP, 0x4D4B)", "Name (MKSP, 0x4D4B\n    Oops")
QEMU_DEADLINE_S = 120
QEMU_APPEND = "console=ttyS0 panic=-1"
INIT = """\
#!/bin/sh
mkdir -p /proc /sys
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "MK-ACPI-LIST: $(ls /sys/firmware/acpi/tables | tr '\\n' ' ')"
for t in /sys/firmware/acpi/tables/SSDT*; do
    echo "MK-ACPI-TABLE ${t##*/} $(dd if=$t bs=1 skip=16 count=8 2>/dev/null)"
done
echo MK-ACPI-DONE
reboot -f
"""


def config_file(tmp_path: Path, upgrade: str = "y") -> Path:
    path = tmp_path / "config"
    path.write_text(f"CONFIG_ACPI=y\nCONFIG_BLK_DEV_INITRD=y\nCONFIG_ACPI_TABLE_UPGRADE={upgrade}\n"
                    if upgrade != "unset" else "CONFIG_ACPI=y\nCONFIG_BLK_DEV_INITRD=y\n")
    return path


def acpi_recipe(tmp_path: Path, *tables: str, config: str = "y") -> str:
    config_file(tmp_path, config)
    listed = ", ".join(f'"{t}"' for t in tables)
    return f'config = "config"\n[acpi]\ntables = [{listed}]\n'


def test_asl_is_compiled_checked_and_listed_for_the_early_segment(tmp_path: Path) -> None:
    needs_tool("iasl")
    (tmp_path / "spawn.asl").write_text(GOOD_ASL)
    files = build_acpi(load(tmp_path, acpi_recipe(tmp_path, "spawn.asl")), tmp_path / "work")
    assert [(f.role.value, f.member, f.media_type) for f in files] == [("acpi", "acpi/spawn.aml", "application/x-aml")]
    header = decode_table(files[0].path.read_bytes())
    assert (header.signature, header.oem_id, header.oem_table_id) == ("SSDT", "MKSPWN", OEM_TABLE_ID)
    assert early_files(files) == [(f"{EARLY_DIR}/spawn.aml", files[0].path)]
    assert EARLY_DIR == "kernel/firmware/acpi"


def test_aml_is_taken_as_is_after_the_kernel_checks(tmp_path: Path) -> None:
    needs_tool("iasl")
    (tmp_path / "a.asl").write_text(GOOD_ASL)
    (compiled,) = build_acpi(load(tmp_path, acpi_recipe(tmp_path, "a.asl")), tmp_path / "w1")
    (tmp_path / "b.aml").write_bytes(compiled.path.read_bytes())
    (copied,) = build_acpi(load(tmp_path, acpi_recipe(tmp_path, "b.aml")), tmp_path / "w2")
    assert copied.path.read_bytes() == compiled.path.read_bytes()
    broken = bytearray(compiled.path.read_bytes())
    broken[-1] ^= 0xFF
    (tmp_path / "b.aml").write_bytes(bytes(broken))
    with pytest.raises(SourceError) as e:
        build_acpi(load(tmp_path, acpi_recipe(tmp_path, "b.aml")), tmp_path / "w3")
    assert "checksum: the bytes sum to" in e.value.message and e.value.loc.file == tmp_path / "b.aml"
    assert not (tmp_path / "w3").exists()


def test_malformed_asl_gives_iasl_error_at_file_and_line_and_no_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    needs_tool("iasl")
    (tmp_path / "bad.asl").write_text(BAD_ASL)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError) as e:
        build_acpi(load(tmp_path, acpi_recipe(tmp_path, "bad.asl")), tmp_path / "work")
    assert e.value.render() == "bad.asl:4: iasl error 6126: syntax error [asl-error]"
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(("config", "message"), [
    ("n", "need CONFIG_ACPI_TABLE_UPGRADE=y in the spawn kernel, but config has CONFIG_ACPI_TABLE_UPGRADE=n"),
    ("unset", "but config has CONFIG_ACPI_TABLE_UPGRADE=n"),
])
def test_spawn_config_must_enable_table_upgrade(tmp_path: Path, config: str, message: str) -> None:
    (tmp_path / "t.asl").write_text(GOOD_ASL)
    with pytest.raises(AcpiConfigError, match=re.escape(message)):
        build_acpi(load(tmp_path, acpi_recipe(tmp_path, "t.asl", config=config)), tmp_path / "work")
    recipe = load(tmp_path, '[acpi]\ntables = ["t.asl"]\n')
    with pytest.raises(AcpiConfigError, match="set \\[kernel\\] config"):
        build_acpi(recipe, tmp_path / "work")


@pytest.mark.parametrize(("data", "message"), [
    (b"SSDT", "shorter than the 36-byte ACPI table header"),
    (b"FACS" + bytes(60), "cannot upgrade a FACS table"),
    (b"ssdt" + bytes(32), "is not an ACPI table signature"),
])
def test_table_header_checks(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        decode_table(data)


@pytest.mark.slow
def test_upgraded_table_is_visible_in_the_booted_kernel(tmp_path: Path, debian_kernel: Path) -> None:
    needs_tool("iasl", "qemu-system-x86_64")
    config = debian_kernel.parent / debian_kernel.name.replace("vmlinuz-", "config-")
    if not config.is_file():
        missing(f"{config} is missing beside the Debian kernel")
    (tmp_path / "spawn.asl").write_text(GOOD_ASL)
    recipe = load(tmp_path, f'config = "{config}"\n[acpi]\ntables = ["spawn.asl"]\n')
    tables = build_acpi(recipe, tmp_path / "work")
    init = tmp_path / "init"
    init.write_text(INIT)
    spec = InitramfsSpec(init=init, compression=Compression.GZIP)
    initrd = build_initramfs(spec, tmp_path / "initrd.img", source_date_epoch=0, early_files=early_files(tables))
    assert initrd.early_size > 0
    argv = ["qemu-system-x86_64", "-accel", "tcg", "-nographic", "-m", "512M", "-no-reboot",
            "-kernel", str(debian_kernel), "-initrd", str(initrd.path), "-append", QEMU_APPEND]
    started = time.monotonic()
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=QEMU_DEADLINE_S,
                              check=False)
        serial = done.stdout.decode("utf-8", "replace")
    except subprocess.TimeoutExpired as e:
        serial = (e.stdout or b"").decode("utf-8", "replace")
        pytest.fail(f"no reboot within {QEMU_DEADLINE_S}s; serial tail:\n{serial[-3000:]}")
    assert "MK-ACPI-DONE" in serial, f"init did not finish; serial tail:\n{serial[-3000:]}"
    assert f"Table Upgrade: install [SSDT-MKSPWN-{OEM_TABLE_ID}]" in serial
    shown = re.findall(r"MK-ACPI-TABLE (SSDT\d*) (\S+)", serial)
    assert any(oem == OEM_TABLE_ID for _, oem in shown), f"{OEM_TABLE_ID} not in {shown}"
    assert time.monotonic() - started < QEMU_DEADLINE_S
