"""Compile .dts text with the real dtc, and turn dtc's complaints about a user's file
into one line naming that file and line."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from mkimage.devicetree.fdt import decode_fdt
from mkimage.errors import FormatError, InputError, Location, ToolError
from mkimage.outputs import write_atomic
from mkimage.run import run

DTC_TIMEOUT_S = 60
# "Error: FILE:LINE.COL-LINE.COL syntax error" (parser) and
# "FILE:LINE.COL-COL: ERROR (check): /path: message" (checks).
_DTC_MESSAGE = re.compile(r"^(?:Error: )?(?P<file>\S+?):(?P<line>\d+)\.\d+(?:-[\d.]+)?:? (?P<message>.*)$")
# Our trees name nodes like memory@0 and pci@0 without a reg, as the multikernel
# documents do; dtc's generic check for that would only add noise.
DTC_FLAGS = ("-W", "no-unit_address_vs_reg")


class SourceError(InputError):
    """A user-supplied source file (.dts, .asl) that its compiler rejected."""

    code = "source-error"

    def __init__(self, path: Path, line: int | None, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.loc = Location(path, line)

    def render(self) -> str:
        return f"{self.loc}: {self.message} [{self.code}]"


def dtc_error_in(stderr: str, user_files: Sequence[Path]) -> SourceError | None:
    """The first error dtc reports inside one of ``user_files``, if any."""
    wanted = {str(p): p for p in user_files}
    for line in stderr.splitlines():
        m = _DTC_MESSAGE.match(line.strip())
        if m is None or m.group("file") not in wanted:
            continue
        message = m.group("message")
        if "error" not in line.lower() or "warning (" in message.lower():
            continue
        return SourceError(wanted[m.group("file")], int(m.group("line")), f"dtc: {message}", code="dts-error")
    return None


def compile_dts(source: str, out: Path, *, user_files: Sequence[Path] = ()) -> bytes:
    """Compile ``source`` with ``dtc -@`` and write the blob to ``out`` atomically.

    ``user_files`` are the files ``source`` includes; an error inside one of them is a
    SourceError at that file and line, and nothing is written.
    """
    with tempfile.TemporaryDirectory(prefix="mkspawn-dtc-") as tmp:
        src = Path(tmp) / out.with_suffix(".dts").name
        blob_path = Path(tmp) / out.name
        src.write_text(source, encoding="utf-8")
        done = run(["dtc", "-@", *DTC_FLAGS, "-I", "dts", "-O", "dtb", "-o", blob_path, src],
                   stage="devicetree", timeout_s=DTC_TIMEOUT_S, check=False)
        stderr = done.stderr.decode("utf-8", "replace")
        if done.returncode != 0:
            found = dtc_error_in(stderr, list(user_files))
            if found is not None:
                raise found
            if user_files:
                # dtc cannot always say where (e.g. a duplicate node made by merging); the
                # user's file is still the only input that can differ between builds.
                last = stderr.strip().splitlines()[-1] if stderr.strip() else "failed"
                raise SourceError(user_files[0], None, f"dtc: {last}", code="dts-error")
            raise ToolError(f"devicetree: dtc rejected a generated tree (a bug): {stderr.strip()}",
                            argv=done.argv, returncode=done.returncode, stderr_tail=stderr)
        blob = blob_path.read_bytes()
    try:
        decode_fdt(blob)
    except FormatError as e:
        raise ToolError(f"devicetree: dtc wrote a blob we cannot read back: {e.message}") from e
    write_atomic(out, blob)
    return blob
