"""Validators and patterns for recipe values.

Each check takes a converted value and returns an error message, or None when the value
is fine; the loader turns a message into `file:line: [section] key: message`.
"""

from __future__ import annotations

import os
from pathlib import Path

from mkimage.errors import shown_path
from mkimage.recipe.settings import matches

NAME_RE = r"[A-Za-z0-9][A-Za-z0-9._-]*"


VERSION_RE = r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*"


def existing_file(value: object) -> str | None:
    if value is None:
        return None
    assert isinstance(value, Path)
    if value.is_file():
        return None
    if value.is_dir():
        return f"expected a file, got a directory: {shown_path(value)}"
    return f"no such file: {shown_path(value)}"


SHA256_RE = r"[0-9a-f]{64}"


def kernel_dir(value: object) -> str | None:
    if value is None:
        return None
    assert isinstance(value, Path)
    return None if value.is_dir() else f"no such directory: {shown_path(value)}"


def kernel_files(values: object) -> str | None:
    assert isinstance(values, list)
    return next((m for m in map(existing_file, values) if m), None)


KCONFIG_SYMBOL = matches(r"(?!CONFIG_)[A-Za-z0-9_]+", "a Kconfig symbol without the CONFIG_ prefix")


KCONFIG_VALUE = matches(r'[ymn]|-?[0-9]+|0[xX][0-9a-fA-F]+|"(?:[^"\\]|\\.)*"',
                         'y, m, n, a number, or a double-quoted string such as \'"console=ttyS0"\'')


def kconfig_options(value: object) -> str | None:
    assert isinstance(value, dict)
    for sym, val in value.items():
        problem = KCONFIG_SYMBOL(sym) or KCONFIG_VALUE(val)
        if problem:
            return f"{sym}: {problem}"
    return None


# The kernel's early loader only looks for these two names (Documentation/arch/x86/microcode.rst).
MICROCODE_NAMES = ("GenuineIntel.bin", "AuthenticAMD.bin")


# include/uapi/linux/limits.h: the kernel's unpacker takes names (with their NUL) up to this.
PATH_MAX = 4096


def archive_path(value: object, *, root_ok: bool = False) -> str | None:
    """A path inside the initramfs: a leading '/' is dropped (as gen_init_cpio does);
    '.', '..' and empty components are refused so nothing lands outside the root."""
    text = str(value)
    inner = text.lstrip("/")
    if inner == "":
        return None if root_ok else f"expected a path inside the initramfs, got {text!r}"
    if any(part in ("", ".", "..") for part in inner.split("/")):
        return f"expected a normalised path without '.', '..' or '//' components, got {text!r}"
    if len(os.fsencode(inner)) + 1 > PATH_MAX:
        return f"a path inside the initramfs is at most {PATH_MAX - 1} bytes, got {len(os.fsencode(inner))}"
    return None


def mode_bits(value: object) -> str | None:
    if value is None:
        return None
    assert isinstance(value, int)
    return None if 0 <= value <= 0o7777 else f"expected permission bits 0o0..0o7777, got {value:#o}"


# include/linux/kdev_t.h: MINORBITS is 20 and dev_t 32 bits, so majors have 12 bits.
MAJOR_MAX = (1 << 12) - 1
MINOR_MAX = (1 << 20) - 1


def existing_dir(value: object) -> str | None:
    assert isinstance(value, Path)
    if value.is_dir():
        return None
    if value.exists():
        return f"expected a directory, got a file: {shown_path(value)}"
    return f"no such directory: {shown_path(value)}"


def existing_files(values: object) -> str | None:
    assert isinstance(values, list)
    return next((msg for v in values if (msg := existing_file(v))), None)


def microcode(values: object) -> str | None:
    assert isinstance(values, list)
    names = [v.name for v in values]
    for v in values:
        if v.name not in MICROCODE_NAMES:
            return f"microcode file must be named {' or '.join(MICROCODE_NAMES)}, got {v.name!r}"
    if len(set(names)) != len(names):
        return "microcode names a vendor file twice"
    return existing_files(values)


MODULE_NAME = matches(r"[A-Za-z0-9_-]+", "a module name such as 'test_static_keys' (no path, no .ko)")


def module_names(values: object) -> str | None:
    assert isinstance(values, list)
    return next((problem for v in values if (problem := MODULE_NAME(v))), None)


PAGE_BYTES = 4096  # x86-64 base page; multikernel-abi.md §7.5 wants page-aligned memory


U64_MAX = (1 << 64) - 1


# PCI address as lspci -D prints it: domain:bus:device.function, device 0..0x1f.
BDF_RE = r"(?:[0-9a-fA-F]{4}:)?[0-9a-fA-F]{2}:[01][0-9a-fA-F]\.[0-7]"


# An ACPI hardware id: PNP ("PNP0501") or ACPI ("QEMU0002") style.
ACPI_HID_RE = r"[A-Z]{3}[0-9A-F]{4}|[A-Z0-9]{4}[0-9A-F]{4}"


# Device-tree node and alias names (Devicetree Specification §2.2.1, §3.3).
DT_NODE_RE = r"[A-Za-z][A-Za-z0-9,._+-]{0,30}"


DT_ALIAS_RE = r"[a-z][a-z0-9-]{0,30}"


def apic_ids(values: object) -> str | None:
    assert isinstance(values, list)
    seen: set[int] = set()
    for v in values:
        if v == 0:
            return "APIC id 0 is the boot CPU"
        if not 0 < v <= U64_MAX:
            return f"expected APIC ids 1..2^64-1, got {v}"
        if v in seen:
            return f"APIC id {v} is listed twice"
        seen.add(v)
    return None


def page_bytes(value: object) -> str | None:
    if value is None:
        return None
    assert isinstance(value, int)
    if not 0 < value <= U64_MAX:
        return f"expected a positive byte count, got {value}"
    return None if value % PAGE_BYTES == 0 else f"{value:#x} is not a multiple of the {PAGE_BYTES}-byte page"


def page_address(value: object) -> str | None:
    if value is None:
        return None
    assert isinstance(value, int)
    if not 0 <= value <= U64_MAX:
        return f"expected an address 0..2^64-1, got {value}"
    return None if value % PAGE_BYTES == 0 else f"{value:#x} is not aligned to the {PAGE_BYTES}-byte page"


def numa_nodes(values: object) -> str | None:
    assert isinstance(values, list)
    if len(set(values)) != len(values):
        return "a NUMA node is listed twice"
    return next((f"expected NUMA node ids 0..1023, got {v}" for v in values if not 0 <= v <= 1023), None)


def pool_memory(values: object) -> str | None:
    assert isinstance(values, list)
    return "at most 64 pool memory chunks" if len(values) > 64 else None


def smt_threads(value: object) -> str | None:
    return None if value in (1, 2, 4, 8) else f"expected 1, 2, 4 or 8 threads per core, got {value}"


def acpi_tables(values: object) -> str | None:
    assert isinstance(values, list)
    for v in values:
        if v.suffix not in (".asl", ".aml"):
            return f"expected .asl (compiled with iasl) or .aml tables, got {v.name!r}"
    stems = [v.stem for v in values]
    if dup := next((s for s in stems if stems.count(s) > 1), None):
        return f"two tables would both be named {dup}.aml"
    # drivers/acpi/tables.c keeps at most ACPI_OVERRIDE_TABLES (64) upgraded tables
    if len(values) > 64:
        return f"the kernel takes at most 64 upgraded tables, got {len(values)}"
    return existing_files(values)


def bdf(value: object) -> str | None:
    if value is None:
        return None
    return matches(BDF_RE, 'a PCI address like "0000:09:00.0" (domain:bus:device.function)')(value)


def devices(value: object) -> str | None:
    """Node names only; how the devices fit together is checked by the loader, which
    can point at each device's own table."""
    assert isinstance(value, dict)
    for name in value:
        if matches(DT_NODE_RE, "x")(name):
            return f"device name {name!r} is not a device-tree node name (letters, digits, ',._+-'; 1..31)"
    return None


def preserve(values: object) -> str | None:
    assert isinstance(values, list)
    names = [v.name for v in values]
    return next((f"preserved-memory request {n!r} is listed twice" for n in names if names.count(n) > 1), None)
