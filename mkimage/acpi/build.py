"""The ACPI stage: compile .asl tables with iasl, check every table as the kernel will,
and list them for the initrd's early segment (kernel/firmware/acpi/, see
Documentation/admin-guide/acpi/initrd_table_override.rst)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mkimage.acpi.tables import AcpiHeader, decode_table
from mkimage.artifacts import Artifact, Role
from mkimage.devicetree.compile import SourceError
from mkimage.errors import FormatError, InputError, ToolError
from mkimage.kernel.kconfig import config_values
from mkimage.outputs import write_atomic
from mkimage.recipe.model import Recipe
from mkimage.run import run

EARLY_DIR = "kernel/firmware/acpi"  # the only place the kernel's table upgrade looks
MEMBER_DIR = "acpi"
MEDIA_TYPE = "application/x-aml"
IASL_TIMEOUT_S = 60
# What the spawn kernel needs for the upgrade to happen at all.
REQUIRED_CONFIG = ("ACPI", "BLK_DEV_INITRD", "ACPI_TABLE_UPGRADE")
# `iasl -vi` prints errors one per line as "FILE(LINE) : error NNNN - message".
_IASL_ERROR = re.compile(r"^(?P<file>.+)\((?P<line>\d+)\) : error\s+(?P<number>\d+) - (?P<message>.*)$")


class AcpiConfigError(InputError):
    code = "acpi-config"


def check_kernel_config(config: Path | None) -> None:
    """Refuse tables the spawn kernel would silently ignore."""
    if config is None:
        raise AcpiConfigError("[acpi] tables need the spawn kernel's .config to check CONFIG_ACPI_TABLE_UPGRADE; "
                              "set [kernel] config", code="acpi-config-unknown")
    values = config_values(config.read_text(encoding="utf-8", errors="replace"))
    missing = [sym for sym in REQUIRED_CONFIG if values.get(sym, "n") != "y"]
    if missing:
        shown = ", ".join(f"CONFIG_{sym}={values.get(sym, 'n')}" for sym in missing)
        raise AcpiConfigError(f"[acpi] tables need CONFIG_ACPI_TABLE_UPGRADE=y in the spawn kernel, but "
                              f"{config.name} has {shown}")


def compile_asl(source: Path, out: Path) -> bytes:
    """``iasl`` in a scratch directory; an error is a SourceError at the .asl line, and
    ``out`` is written only on success."""
    with tempfile.TemporaryDirectory(prefix="mkspawn-iasl-") as tmp:
        prefix = Path(tmp) / source.stem
        done = run(["iasl", "-vi", "-p", prefix, source.resolve()], stage="acpi", timeout_s=IASL_TIMEOUT_S,
                   cwd=Path(tmp), check=False)
        report = (done.stdout + b"\n" + done.stderr).decode("utf-8", "replace")
        for line in report.splitlines():
            m = _IASL_ERROR.match(line.strip())
            if m is not None:
                raise SourceError(source, int(m.group("line")), f"iasl error {m.group('number')}: "
                                  f"{m.group('message').strip()}", code="asl-error")
        aml = prefix.with_suffix(".aml")
        if done.returncode != 0 or not aml.is_file():
            tail = report.strip().splitlines()[-1] if report.strip() else "no output"
            raise ToolError(f"acpi: iasl failed on {source.name}: {tail}", argv=done.argv,
                            returncode=done.returncode, stderr_tail=report[-2000:])
        data = aml.read_bytes()
    write_atomic(out, data)
    return data


def _checked(data: bytes, origin: Path) -> AcpiHeader:
    try:
        return decode_table(data)
    except FormatError as e:
        raise SourceError(origin, None, f"not a table the kernel would take: {e.message}",
                          code="bad-acpi-table") from e


def build_acpi(recipe: Recipe, work_dir: Path, *, kernel_config: Path | None = None) -> list[Artifact]:
    """Compile and check ``[acpi] tables`` into ``work_dir/acpi``; [] when there are none.

    ``kernel_config`` is the spawn's final .config (from the kernel build); unset, the
    recipe's ``[kernel] config`` is used.
    """
    tables = recipe.acpi.tables
    if not tables:
        return []
    check_kernel_config(kernel_config or recipe.kernel.config)
    files: list[Artifact] = []
    for table in tables:
        out = work_dir / MEMBER_DIR / f"{table.stem}.aml"
        if table.suffix == ".asl":
            _checked(compile_asl(table, out), table)
        else:
            data = table.read_bytes()
            _checked(data, table)
            write_atomic(out, data)
        files.append(Artifact(Role.ACPI, f"{MEMBER_DIR}/{out.name}", out, MEDIA_TYPE))
    return files


def early_files(files: Sequence[Artifact]) -> list[tuple[str, Path]]:
    """(archive path, host path) pairs for ``build_initramfs(..., early_files=…)``."""
    return [(f"{EARLY_DIR}/{f.path.name}", f.path) for f in files if f.role is Role.ACPI]
