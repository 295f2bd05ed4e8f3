"""Check a kernel image against what the kexec loader of an ABI profile will accept.

The rules mirror the kernel's own probes so a bad image is caught at build time rather
than as an ``ENOEXEC`` on the host:

* x86 bzImage: ``arch/x86/kernel/kexec-bzimage64.c`` (``kexec-and-formats.md`` §2),
  probe checks in the kernel's order, then the load-time truncation and cmdline checks;
* arm64 Image: ``arch/arm64/kernel/kexec_image.c`` (§3);
* multikernel ELF vmlinux: the ``kexec-vmlinux`` loader (``multikernel-abi.md`` §9, §14;
  the note rule's source is cited in ``elfnote``).  A bzImage under a multikernel profile
  is checked as a bzImage and then as the ELF its payload inflates to, which is what the
  host's tools (kerf) extract and load.

Beyond the kernel's probe, a bzImage must be whole: as long as its setup header says
(setup sectors plus syssize paragraphs) and with a payload that inflates to the end of
its stream and to the size the build appended, so a cut or corrupted image is refused
here rather than by the decompressor on the host.

Rules are reported in order.  A structural failure (wrong magic, too short, protocol
too old, not an x86_64 ELF) ends the list, as it ends the kernel's probe, because later
rules would read meaningless fields; other failures are reported and checking goes on,
so one run names every problem.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from pathlib import Path

from mkimage.errors import FormatError, InputError, UsageError
from mkimage.kernel import arm64_image, elfnote, setup_header
from mkimage.kernel.arm64_image import Arm64ImageHeader
from mkimage.kernel.elfnote import ElfInfo
from mkimage.kernel.release import CodecUnavailableError, decompress
from mkimage.kernel.setup_header import Compression, SetupHeader
from mkimage.recipe.targets import AbiProfile, Arch

# kexec-bzimage64.c: "File is too short to be a bzImage" below this many bytes.
BZIMAGE_MIN_SIZE = 1024
# kexec-bzimage64.c reserves room in the command line for "elfcorehdr=0x<addr> " even on
# non-crash loads (MAX_ELFCOREHDR_STR_LEN).
CMDLINE_RESERVED = 30


# The multikernel note type each profile's ELF loader looks for.  Both generations'
# loaders read 0x4d4b (see elfnote for the source); the table stays so a future
# generation that changes it is one row.
NOTE_TYPES: dict[AbiProfile, int] = {
    AbiProfile.MK2: elfnote.MK_NOTE_TYPE,
    AbiProfile.MK_MASTER: elfnote.MK_NOTE_TYPE,
}
MULTIKERNEL_PROFILES = frozenset(NOTE_TYPES)


class ImageKind(enum.StrEnum):
    BZIMAGE = "bzimage"
    ELF_VMLINUX = "elf-vmlinux"  # any ELF; the rules say whether it is a usable vmlinux
    ARM64_IMAGE = "arm64-image"
    UNKNOWN = "unknown"


class RuleName(enum.StrEnum):
    # x86 bzImage64 probe, in the kernel's order
    FILE_SIZE = "file-size"
    HDRS_MAGIC = "hdrs-magic"
    SETUP_HEADER = "setup-header"  # only reported when the header cannot be decoded
    BOOT_FLAG = "boot-flag"
    PROTOCOL_VERSION = "protocol-version"
    LOADED_HIGH = "loaded-high"
    XLF_KERNEL_64 = "xlf-kernel-64"
    XLF_ABOVE_4G = "xlf-above-4g"
    # x86 bzImage64 load time
    NOT_TRUNCATED = "not-truncated"
    CMDLINE_SIZE = "cmdline-size"
    # the compressed vmlinux inflates whole (what the boot decompressor will do)
    PAYLOAD = "payload"
    # arm64 Image
    ARM64_HEADER_LENGTH = "arm64-header-length"
    ARM64_MAGIC = "arm64-magic"
    ARM64_IMAGE_SIZE = "arm64-image-size"
    ARM64_ENDIANNESS = "arm64-little-endian"
    ARM64_PAGE_SIZE = "arm64-page-size"
    # multikernel ELF vmlinux
    PROFILE_ARCH = "profile-arch"
    ELF_MAGIC = "elf-magic"
    ELF_HEADER = "elf-header"
    ELF_CLASS = "elf-class"
    ELF_MACHINE = "elf-machine"
    ELF_TYPE = "elf-type"
    MK_NOTE = "mk-note"


@dataclass(frozen=True, slots=True)
class Rule:
    name: RuleName
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class ContractReport:
    kind: ImageKind
    arch: Arch
    abi_profile: AbiProfile
    rules: tuple[Rule, ...]
    setup_header: SetupHeader | None = None
    arm64_header: Arm64ImageHeader | None = None
    elf: ElfInfo | None = None

    @property
    def ok(self) -> bool:
        return bool(self.rules) and all(r.passed for r in self.rules)

    @property
    def failures(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if not r.passed)

    def to_dict(self) -> dict[str, object]:
        """Plain data for ``--json`` output."""
        return {
            "kind": str(self.kind),
            "arch": str(self.arch),
            "abi_profile": str(self.abi_profile),
            "ok": self.ok,
            "rules": [
                {"name": str(r.name), "passed": r.passed, "detail": r.detail}
                for r in self.rules
            ],
        }


@dataclass(slots=True)
class _Rules:
    """Accumulates rules; ``check`` returns whether the rule passed."""

    items: list[Rule] = field(default_factory=list)

    def check(self, name: RuleName, passed: bool, detail: str) -> bool:
        self.items.append(Rule(name, passed, detail))
        return passed


def detect_kind(data: bytes) -> ImageKind:
    """What ``data`` looks like, from magics alone."""
    if data[0x202:0x206] == setup_header.HDRS_MAGIC:
        return ImageKind.BZIMAGE
    if elfnote.is_elf(data):
        return ImageKind.ELF_VMLINUX
    if arm64_image.has_arm64_magic(data):
        return ImageKind.ARM64_IMAGE
    return ImageKind.UNKNOWN


def _check_bzimage(
    data: bytes, cmdline: bytes | None, needs_elf: bool, rules: _Rules
) -> tuple[SetupHeader | None, bytes | None]:
    """The header, and the inflated payload once every structural rule passed."""
    size = len(data)
    if not rules.check(
        RuleName.FILE_SIZE,
        size >= BZIMAGE_MIN_SIZE,
        f"{size} bytes (a bzImage has at least {BZIMAGE_MIN_SIZE})",
    ):
        return None, None
    magic = data[0x202:0x206]
    has_hdrs = magic == setup_header.HDRS_MAGIC
    if not rules.check(
        RuleName.HDRS_MAGIC,
        has_hdrs,
        "HdrS at 0x202"
        if has_hdrs
        else f"{magic!r} at 0x202, expected {setup_header.HDRS_MAGIC!r}: not a bzImage "
        f"(looks like {detect_kind(data)})",
    ):
        return None, None
    try:
        hdr = setup_header.parse_setup_header(data)
    except FormatError as e:
        rules.check(RuleName.SETUP_HEADER, False, e.message)
        return None, None
    if not rules.check(
        RuleName.BOOT_FLAG,
        hdr.boot_flag == setup_header.BOOT_FLAG_MAGIC,
        f"boot_flag 0x{hdr.boot_flag:04X}"
        + (
            ""
            if hdr.boot_flag == setup_header.BOOT_FLAG_MAGIC
            else f", expected 0x{setup_header.BOOT_FLAG_MAGIC:04X}: no x86 boot sector"
        ),
    ):
        return hdr, None
    if not rules.check(
        RuleName.PROTOCOL_VERSION,
        hdr.version >= setup_header.PROTOCOL_XLOADFLAGS,
        f"boot protocol {hdr.protocol} (kexec's bzImage64 loader needs at least 2.12)",
    ):
        return hdr, None
    if not rules.check(
        RuleName.LOADED_HIGH,
        bool(hdr.loadflags & setup_header.LOADED_HIGH),
        f"loadflags 0x{hdr.loadflags:02x}: LOADED_HIGH "
        + (
            "set"
            if hdr.loadflags & setup_header.LOADED_HIGH
            else "clear (a zImage, not a bzImage)"
        ),
    ):
        return hdr, None
    xlf = hdr.xloadflags
    rules.check(
        RuleName.XLF_KERNEL_64,
        bool(xlf & setup_header.XLF_KERNEL_64),
        f"xloadflags 0x{xlf:02x}: XLF_KERNEL_64 "
        + (
            "set"
            if xlf & setup_header.XLF_KERNEL_64
            else "clear (not a 64-bit bzImage)"
        ),
    )
    rules.check(
        RuleName.XLF_ABOVE_4G,
        bool(xlf & setup_header.XLF_CAN_BE_LOADED_ABOVE_4G),
        f"xloadflags 0x{xlf:02x}: XLF_CAN_BE_LOADED_ABOVE_4G "
        + (
            "set"
            if xlf & setup_header.XLF_CAN_BE_LOADED_ABOVE_4G
            else "clear (build with CONFIG_RELOCATABLE=y on x86_64)"
        ),
    )
    needed = max(hdr.setup_size, hdr.declared_size)
    rules.check(
        RuleName.NOT_TRUNCATED,
        size >= needed,
        f"{size} bytes; the setup header declares {needed} ({hdr.setup_sects} setup sectors"
        + (f" + {hdr.syssize} paragraphs of protected-mode code)" if hdr.syssize else ")"),
    )
    if cmdline is not None:
        # kexec_file_load's cmdline_len counts the trailing NUL.
        length = len(cmdline) if cmdline.endswith(b"\0") else len(cmdline) + 1
        needed = length + CMDLINE_RESERVED
        rules.check(
            RuleName.CMDLINE_SIZE,
            needed <= hdr.cmdline_size,
            f"{length} bytes incl. NUL + {CMDLINE_RESERVED} reserved = {needed}; "
            f"cmdline_size is {hdr.cmdline_size}",
        )
    return hdr, _check_payload(data, hdr, needs_elf, rules)


def _check_payload(data: bytes, hdr: SetupHeader, needs_elf: bool, rules: _Rules) -> bytes | None:
    """Inflate the payload as the boot decompressor would; the vmlinux, or None if the
    rule failed or the codec is not available here (then ``needs_elf`` decides whether
    that is a failure: a multikernel profile must read the note inside)."""
    try:
        blob = setup_header.payload_bytes(data, hdr)
        compression = setup_header.identify_compression(blob)
        vmlinux = decompress(blob, compression)
    except CodecUnavailableError as e:
        rules.check(RuleName.PAYLOAD, not needs_elf,
                    f"not inflated: {e.message}" + ("; the multikernel note inside cannot be read"
                                                    if needs_elf else ""))
        return None
    except FormatError as e:
        rules.check(RuleName.PAYLOAD, False, e.message)
        return None
    where = f"{compression} payload of {len(blob)} bytes at {hdr.payload_file_offset}"
    if compression is Compression.NONE:
        rules.check(RuleName.PAYLOAD, True, f"{where}, an uncompressed ELF")
        return vmlinux
    # arch/x86/boot/compressed/mkpiggy.c takes the inflated size from the payload's last
    # four bytes (the size the build appends; gzip's own ISIZE trailer for gzip).
    declared = int.from_bytes(blob[-4:], "little")
    inflated = len(vmlinux) & 0xFFFFFFFF
    if not rules.check(
        RuleName.PAYLOAD,
        declared == inflated,
        f"{where} inflates to {len(vmlinux)} bytes"
        + (", as its size trailer says" if declared == inflated
           else f", but its last 4 bytes declare {declared}: the payload is cut or corrupt"),
    ):
        return None
    return vmlinux


def _check_arm64(
    data: bytes, page_sizes: frozenset[int], rules: _Rules
) -> Arm64ImageHeader | None:
    if not rules.check(
        RuleName.ARM64_HEADER_LENGTH,
        len(data) >= arm64_image.ARM64_HEADER_SIZE,
        f"{len(data)} bytes (the header is {arm64_image.ARM64_HEADER_SIZE})",
    ):
        return None
    has_magic = arm64_image.has_arm64_magic(data)
    if not rules.check(
        RuleName.ARM64_MAGIC,
        has_magic,
        "ARM\\x64 at 0x38"
        if has_magic
        else f"{data[0x38:0x3C]!r} at 0x38, expected {arm64_image.ARM64_MAGIC!r}: not an arm64 "
        f"Image (looks like {detect_kind(data)})",
    ):
        return None
    hdr = arm64_image.parse_arm64_header(data)
    rules.check(
        RuleName.ARM64_IMAGE_SIZE,
        hdr.image_size != 0,
        f"image_size {hdr.image_size}"
        + (" (a pre-3.17 kernel)" if hdr.image_size == 0 else ""),
    )
    rules.check(
        RuleName.ARM64_ENDIANNESS,
        not hdr.big_endian,
        "big-endian kernel" if hdr.big_endian else "little-endian kernel",
    )
    page = hdr.page_size
    rules.check(
        RuleName.ARM64_PAGE_SIZE,
        page is None or page in page_sizes,
        ("page size unspecified" if page is None else f"page size {page // 1024} KiB")
        + f" (target supports {', '.join(f'{p // 1024} KiB' for p in sorted(page_sizes))})",
    )
    return hdr


def _describe_note_types(info: ElfInfo) -> str:
    linux = list(info.notes_named(elfnote.MK_NOTE_NAME))
    if not info.has_note_segment:
        return "no PT_NOTE segment"
    if not linux:
        names = sorted({n.name or "" for n in info.notes})
        return f"no note named {elfnote.MK_NOTE_NAME!r} (notes: {', '.join(names) or 'none'})"
    types = ", ".join(f"0x{n.type:x}" for n in linux)
    return f"{elfnote.MK_NOTE_NAME!r} notes have types {types}"


def _check_mk_note(info: ElfInfo, profile: AbiProfile, rules: _Rules) -> None:
    """The loader takes the first note of its type with namesz 6 and an 8-byte
    descriptor; an entry offset of 0 is treated as no note (ENOEXEC)."""
    wanted = NOTE_TYPES[profile]
    mk_notes = elfnote.multikernel_notes(info)
    usable = [n for n in mk_notes if n.type == wanted and n.namesz == elfnote.MK_NOTE_NAMESZ
              and len(n.desc) == elfnote.MK_NOTE_DESC_SIZE]
    if usable:
        note = usable[0]
        rules.check(
            RuleName.MK_NOTE,
            note.entry_offset != 0,
            f"note {elfnote.MK_NOTE_NAME!r} type 0x{wanted:x} at offset {note.offset}, "
            + (f"entry offset 0x{note.entry_offset:x}" if note.entry_offset
               else "entry offset 0: the loader treats it as missing"),
        )
        return
    typed = next((n for n in mk_notes if n.type == wanted), None)
    other = next((n for n in mk_notes if n.type != wanted), None)
    if typed is not None:
        detail = (
            f"note {elfnote.MK_NOTE_NAME!r} type 0x{wanted:x} at offset {typed.offset} has namesz "
            f"{typed.namesz} and a {len(typed.desc)}-byte descriptor; the loader needs namesz "
            f"{elfnote.MK_NOTE_NAMESZ} and {elfnote.MK_NOTE_DESC_SIZE} bytes"
        )
    elif other is not None:
        detail = (
            f"found note type 0x{other.type:X}, a value from third-party scripts that no kernel "
            f"loader reads; {profile}'s loader looks for type 0x{wanted:x}"
        )
    else:
        detail = (
            f"no {elfnote.MK_NOTE_NAME!r} note of type 0x{wanted:x}: "
            f"{_describe_note_types(info)}; not a multikernel vmlinux"
        )
    rules.check(RuleName.MK_NOTE, False, detail)


def _check_elf(data: bytes, profile: AbiProfile, rules: _Rules, where: str = "") -> ElfInfo | None:
    """``where`` prefixes the details when the ELF is a bzImage's inflated payload."""
    if not rules.check(
        RuleName.ELF_MAGIC,
        elfnote.is_elf(data),
        f"{where}ELF image"
        if elfnote.is_elf(data)
        else f"{where}not an ELF file (looks like {detect_kind(data)}); "
        f"profile {profile} loads the ELF vmlinux",
    ):
        return None
    try:
        info = elfnote.read_elf(data)
    except FormatError as e:
        rules.check(RuleName.ELF_HEADER, False, where + e.message)
        return None
    rules.check(
        RuleName.ELF_HEADER, True, f"{where}ELF{info.elf_class}, {len(info.notes)} notes"
    )
    if not rules.check(
        RuleName.ELF_CLASS, info.elf_class == 64, f"ELFCLASS{info.elf_class}"
    ):
        return info
    if not rules.check(
        RuleName.ELF_MACHINE, info.machine == "EM_X86_64", f"e_machine {info.machine}"
    ):
        return info
    if not rules.check(
        RuleName.ELF_TYPE,
        info.type in ("ET_EXEC", "ET_DYN"),
        f"e_type {info.type}"
        + (
            ""
            if info.type in ("ET_EXEC", "ET_DYN")
            else " (expected ET_EXEC or ET_DYN)"
        ),
    ):
        return info
    _check_mk_note(info, profile, rules)
    return info


def _load(image: bytes | os.PathLike[str]) -> bytes:
    if isinstance(image, bytes):
        return image
    path = Path(image)
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read kernel image: {e.strerror}") from e


def check_image(
    image: bytes | os.PathLike[str],
    *,
    abi_profile: AbiProfile | str,
    arch: Arch | str,
    cmdline: bytes | None = None,
    arm64_page_sizes: frozenset[int] = frozenset({4096, 16384, 65536}),
) -> ContractReport:
    """Check ``image`` (bytes or a path) against the loader contract of ``abi_profile``.

    ``cmdline`` (x86) is the command line that will be passed, with or without its NUL;
    it is checked against a bzImage's cmdline_size.  The multikernel ELF loader's limit
    is not documented, so an ELF image's cmdline is not checked.
    ``arm64_page_sizes`` are the granules the target CPU supports (the kernel refuses an
    Image whose declared page size the CPU lacks).
    """
    try:
        profile = AbiProfile(abi_profile)
        target = Arch(arch)
    except ValueError as e:
        raise UsageError(str(e), code="bad-choice") from e
    data = _load(image)
    kind = detect_kind(data)
    rules = _Rules()
    hdr: SetupHeader | None = None
    arm_hdr: Arm64ImageHeader | None = None
    info: ElfInfo | None = None
    if target is Arch.ARM64:
        if profile in (AbiProfile.NONE, AbiProfile.V2):
            arm_hdr = _check_arm64(data, arm64_page_sizes, rules)
        else:
            rules.check(
                RuleName.PROFILE_ARCH,
                False,
                f"profile {profile} defines an x86_64 spawn-image contract only",
            )
    elif profile not in MULTIKERNEL_PROFILES or kind is ImageKind.BZIMAGE:
        needs_elf = profile in MULTIKERNEL_PROFILES
        hdr, vmlinux = _check_bzimage(data, cmdline, needs_elf, rules)
        if needs_elf and vmlinux is not None:
            info = _check_elf(vmlinux, profile, rules, where="payload: ")
    else:
        info = _check_elf(data, profile, rules)
    return ContractReport(
        kind=kind,
        arch=target,
        abi_profile=profile,
        rules=tuple(rules.items),
        setup_header=hdr,
        arm64_header=arm_hdr,
        elf=info,
    )
