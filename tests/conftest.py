"""Shared fixtures: tool gating that never skips silently in CI, a real Debian cloud kernel,
and builders for synthetic kernel images.

The synthetic builders write the formats from their specifications (boot.rst, the arm64
booting.rst header, the ELF gABI) so the decoders are tested on bytes we control; the
Debian kernel checks them against what a distribution actually ships.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import pytest

from mkimage.context import default_cache_root
from mkimage.errors import ToolError
from mkimage.qemu import hostkernel

IN_CI = os.environ.get("CI", "").lower() == "true"
REPO = Path(__file__).resolve().parent.parent


def missing(reason: str) -> NoReturn:
    """Skip locally; under CI=true a missing prerequisite is a failure, never a skip."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def debian_kernel() -> Path:
    """``boot/vmlinuz-<release>`` from Debian's cloud kernel package, as `mkspawn check`
    fetches it for its default host (mkimage/qemu/hostkernel.py), in the user's cache."""
    try:
        return hostkernel.debian_kernel(default_cache_root())
    except ToolError as e:
        missing(f"cannot fetch a Debian kernel package: {e.message}")


@pytest.fixture(scope="session")
def debian_kernel_bytes(debian_kernel: Path) -> bytes:
    return debian_kernel.read_bytes()


# --- synthetic x86 bzImage -------------------------------------------------------------

SYNTH_RELEASE = "9.8.7-synthetic"
SYNTH_VERSION_STRING = f"{SYNTH_RELEASE} (tester@example) #1 SMP"
SYNTH_SETUP_SECTS = 3
SYNTH_PAYLOAD_OFFSET = 0x40

BzImageFactory = Callable[..., bytes]


def _build_bzimage(
    payload: bytes = b"\x1f\x8b\x08\x00" + bytes(12),
    *,
    version_string: str | None = SYNTH_VERSION_STRING,
    size_append: int | None = None,
) -> bytes:
    """A bzImage that passes every bzImage64 check, with ``payload`` as its compressed
    kernel.  ``size_append`` adds the u32 trailer the kernel build appends."""
    setup_size = (SYNTH_SETUP_SECTS + 1) * 512
    image = bytearray(setup_size)
    image[0x1F1] = SYNTH_SETUP_SECTS
    struct.pack_into("<H", image, 0x1FE, 0xAA55)
    image[0x200:0x202] = b"\xeb\x6a"  # jmp over the header; 0x201 is the header length
    image[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", image, 0x206, 0x020F)
    if version_string is not None:
        string_at = 0x400
        image[string_at : string_at + len(version_string) + 1] = (
            version_string.encode() + b"\0"
        )
        struct.pack_into("<H", image, 0x20E, string_at - 0x200)
    image[0x211] = 0x01  # LOADED_HIGH
    struct.pack_into("<IB", image, 0x230, 0x200000, 1)
    struct.pack_into(
        "<HI", image, 0x236, 0x03, 2047
    )  # KERNEL_64 | ABOVE_4G; cmdline_size
    trailer = b"" if size_append is None else struct.pack("<I", size_append)
    struct.pack_into(
        "<II", image, 0x248, SYNTH_PAYLOAD_OFFSET, len(payload) + len(trailer)
    )
    struct.pack_into("<QII", image, 0x258, 0x1000000, 0x400000, 0)
    protected = bytearray(SYNTH_PAYLOAD_OFFSET) + payload + trailer
    protected += bytes(-len(protected) % 512)
    struct.pack_into("<I", image, 0x1F4, len(protected) // 16)  # syssize, as tools/build.c sets it
    return bytes(image + protected)


@pytest.fixture(scope="session")
def make_bzimage() -> BzImageFactory:
    return _build_bzimage


@pytest.fixture(scope="session")
def synthetic_bzimage() -> bytes:
    return _build_bzimage(
        gzip.compress(b"Linux version " + SYNTH_RELEASE.encode(), mtime=0)
    )


# --- synthetic arm64 Image -------------------------------------------------------------


def _build_arm64(
    *, image_size: int = 0x200000, flags: int = 0x0A, length: int = 4096
) -> bytes:
    # flags 0x0A: little-endian, 4K pages, PHYS_BASE anywhere (what Debian arm64 ships)
    header = struct.pack(
        "<II QQQ QQQ 4sI",
        0x91005A4D,
        0x14000000,
        0,
        image_size,
        flags,
        0,
        0,
        0,
        b"ARM\x64",
        0x40,
    )
    return (header + bytes(max(0, length - len(header))))[:length]


@pytest.fixture(scope="session")
def make_arm64() -> Callable[..., bytes]:
    return _build_arm64


# --- synthetic ELF ---------------------------------------------------------------------

EM_X86_64 = 62
EM_AARCH64 = 183
ET_REL, ET_EXEC, ET_DYN = 1, 2, 3
PT_LOAD, PT_NOTE = 1, 4

Note = tuple[bytes, int, bytes]  # name (without NUL), type, descriptor


def _note_bytes(notes: Sequence[Note]) -> bytes:
    """ELF notes: namesz, descsz, type, then name and descriptor each padded to 4."""
    out = bytearray()
    for name, note_type, desc in notes:
        name_z = name + b"\0"
        out += struct.pack("<III", len(name_z), len(desc), note_type)
        out += name_z + bytes(-len(name_z) % 4)
        out += desc + bytes(-len(desc) % 4)
    return bytes(out)


def _build_elf(
    notes: Sequence[Note] = (),
    *,
    elf_class: int = 64,
    machine: int = EM_X86_64,
    elf_type: int = ET_EXEC,
) -> bytes:
    """A minimal little-endian ELF: header, one PT_LOAD, one PT_NOTE (if ``notes``)."""
    body = _note_bytes(notes)
    if elf_class == 64:
        ehsize, phentsize, ph_fmt = 64, 56, "<IIQQQQQQ"
    else:
        ehsize, phentsize, ph_fmt = 52, 32, "<IIIIIIII"
    phnum = 2 if notes else 1
    note_off = ehsize + phnum * phentsize
    total = note_off + len(body)
    ident = b"\x7fELF" + bytes([1 if elf_class == 32 else 2, 1, 1, 0]) + bytes(8)
    word = "Q" if elf_class == 64 else "I"
    header = ident + struct.pack(
        f"<HHI{word}{word}{word}IHHHHHH",
        elf_type,
        machine,
        1,
        0x1000000,
        ehsize,
        0,
        0,
        ehsize,
        phentsize,
        phnum,
        0,
        0,
        0,
    )
    phdrs = bytearray()
    if elf_class == 64:
        # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align
        phdrs += struct.pack(
            ph_fmt, PT_LOAD, 5, 0, 0x1000000, 0x1000000, total, total, 0x200000
        )
        if notes:
            phdrs += struct.pack(
                ph_fmt, PT_NOTE, 4, note_off, 0, 0, len(body), len(body), 4
            )
    else:
        # p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_flags, p_align
        phdrs += struct.pack(
            ph_fmt, PT_LOAD, 0, 0x1000000, 0x1000000, total, total, 5, 0x1000
        )
        if notes:
            phdrs += struct.pack(
                ph_fmt, PT_NOTE, note_off, 0, 0, len(body), len(body), 4, 4
            )
    return header + bytes(phdrs) + body


@pytest.fixture(scope="session")
def make_elf() -> Callable[..., bytes]:
    return _build_elf


@pytest.fixture(scope="session")
def cc() -> str:
    """The C compiler (gcc) for tests that link real ELF files."""
    found = shutil.which("gcc")
    if found is None:
        missing("gcc is not installed (needed to link test ELF files)")
    return found


def needs_tool(*tools: str) -> None:
    """Skip locally when a tool is missing; fail under CI=true."""
    for tool in tools:
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed")


@pytest.fixture(scope="session")
def synthetic_kernel(tmp_path_factory: pytest.TempPathFactory, synthetic_bzimage: bytes) -> Path:
    """A small bzImage file that passes the bzImage64 probe and names a release."""
    path = tmp_path_factory.mktemp("synthetic") / "bzImage"
    path.write_bytes(synthetic_bzimage)
    return path


# The lines a command prints on stderr off a terminal while it works (mkimage/progress.py
# PlainRenderer): a task's start, each of its steps and its end.
_PROGRESS_LINE = re.compile(r"^mkspawn: (?!error: ).*(?: …|: done \(.*\)| \(\d+\.\d s\))$")


def without_progress(stderr: str) -> list[str]:
    """stderr's lines less the progress lines: what a failure printed besides its work."""
    return [line for line in stderr.splitlines() if not _PROGRESS_LINE.match(line)]


def run_mkspawn(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    """The real CLI in a child process, as a user runs it.

    The cache stays the user's (kernel builds are reused); the config dir is a fresh
    empty one, so no test depends on the developer's default trust store.
    """
    full_env = {
        "PATH": os.environ["PATH"],
        "HOME": str(Path.home()),
        "XDG_CACHE_HOME": str(default_cache_root().parent),
        "XDG_CONFIG_HOME": "/nonexistent/mkspawn-test-config",
        **(env or {}),
    }
    return subprocess.run([sys.executable, "-m", "mkimage", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=full_env, timeout=timeout_s)


# --- recipes ---------------------------------------------------------------------------

RECIPE_EPOCH = 1_700_000_000
EMPTY_NEWC = b"070701" + b"0" * 104


def prebuilt_recipe(directory: Path, kernel: Path | str, *, name: str = "demo", version: str = "1.0.0",
                    cmdline: str = "console=ttyS0 panic=-1", initrd: Path | str | None = None,
                    epoch: int = RECIPE_EPOCH, extra: str = "") -> Path:
    """``directory/spawn.toml`` around a prebuilt kernel: the cheapest recipe the real
    builder takes.  Without ``initrd`` a minimal newc archive is written beside it;
    ``extra`` is appended to the recipe verbatim."""
    directory.mkdir(parents=True, exist_ok=True)
    if initrd is None:
        (directory / "initrd.cpio").write_bytes(EMPTY_NEWC)
        initrd = "initrd.cpio"
    recipe = directory / "spawn.toml"
    recipe.write_text(f"""
[metadata]
name = "{name}"
version = "{version}"
source_date_epoch = {epoch}
[kernel]
image = "{kernel}"
cmdline = "{cmdline}"
[initramfs]
image = "{initrd}"
{extra}
""")
    return recipe
