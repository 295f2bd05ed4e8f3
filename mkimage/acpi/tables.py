"""The ACPI system description table header (ACPI 6.5 §5.2.6), decoded from bytes, and
the checks the kernel's initrd table upgrade applies before it takes a table
(drivers/acpi/tables.c, kexec-and-formats.md §7.3)."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mkimage.errors import FormatError

HEADER = struct.Struct("<4sIBB6s8sI4sI")  # 36 bytes
# The kernel's upgrade path cannot replace these: the RSDP has no common header and the
# FACS has no checksum ("RSD " is how an RSDP's "RSD PTR " signature starts).
NOT_UPGRADABLE = frozenset({"FACS", "RSD "})


@dataclass(frozen=True, slots=True)
class AcpiHeader:
    signature: str
    length: int
    revision: int
    checksum: int
    oem_id: str
    oem_table_id: str
    oem_revision: int
    creator_id: str
    creator_revision: int


def _ascii(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\0 ")


def decode_table(data: bytes) -> AcpiHeader:
    """The header of an .aml table, after the checks the kernel makes on upgrade."""
    if len(data) < HEADER.size:
        raise FormatError(f"{len(data)} bytes is shorter than the 36-byte ACPI table header", offset=0,
                          code="bad-acpi-table")
    sig, length, revision, checksum, oem_id, oem_table_id, oem_rev, creator, creator_rev = HEADER.unpack_from(data)
    signature = sig.decode("ascii", "replace")
    if not all(c.isupper() or c.isdigit() or c == "_" for c in signature.replace(" ", "")):
        raise FormatError(f"signature {sig!r} is not an ACPI table signature", offset=0, code="bad-acpi-table")
    if signature in NOT_UPGRADABLE:
        raise FormatError(f"the kernel cannot upgrade a {signature.strip()} table", offset=0, code="bad-acpi-table")
    if length != len(data):
        raise FormatError(f"header length: observed {length}, expected the file size {len(data)}", offset=4,
                          code="bad-acpi-table")
    if sum(data) % 256:
        raise FormatError(f"checksum: the bytes sum to {sum(data) % 256:#04x} mod 256, expected 0", offset=9,
                          code="bad-acpi-table")
    return AcpiHeader(signature, length, revision, checksum, _ascii(oem_id), _ascii(oem_table_id), oem_rev,
                      _ascii(creator), creator_rev)
