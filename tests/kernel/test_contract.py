"""Loader-contract checks (``mkimage.kernel.contract``) and the ELF note reader.

The multikernel ELF loader cannot run here (it needs a multikernel host), so ELF images
are checked against its documented contract using files we write or link ourselves.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mkimage.errors import FormatError, InputError, UsageError
from mkimage.kernel.contract import (
    NOTE_TYPES,
    AbiProfile,
    Arch,
    ContractReport,
    ImageKind,
    RuleName,
    check_image,
    detect_kind,
)
from mkimage.kernel.elfnote import (
    MK_NOTE_TYPE,
    UNCONFIRMED_NOTE_TYPE,
    multikernel_notes,
    read_elf,
)
from mkimage.kernel.release import decompress_payload, kernel_release
from mkimage.kernel.setup_header import parse_setup_header
from mkimage.run import run
from tests.conftest import BzImageFactory

ElfFactory = Callable[..., bytes]
EM_AARCH64, ET_REL, ET_DYN = 183, 1, 3
BZIMAGE_ORDER = [
    RuleName.FILE_SIZE,
    RuleName.HDRS_MAGIC,
    RuleName.BOOT_FLAG,
    RuleName.PROTOCOL_VERSION,
    RuleName.LOADED_HIGH,
    RuleName.XLF_KERNEL_64,
    RuleName.XLF_ABOVE_4G,
    RuleName.NOT_TRUNCATED,
    RuleName.CMDLINE_SIZE,
    RuleName.PAYLOAD,
]
ELF_ORDER = [
    RuleName.ELF_MAGIC,
    RuleName.ELF_HEADER,
    RuleName.ELF_CLASS,
    RuleName.ELF_MACHINE,
    RuleName.ELF_TYPE,
    RuleName.MK_NOTE,
]


def names(report: ContractReport) -> list[RuleName]:
    return [r.name for r in report.rules]


def only_failure(report: ContractReport) -> RuleName:
    assert not report.ok
    (failed,) = report.failures
    return failed.name


# --- a real Debian kernel ------------------------------------------------------------------


@pytest.mark.parametrize("profile", [AbiProfile.NONE, AbiProfile.V2])
def test_debian_kernel_passes_bzimage_rules(
    debian_kernel: Path, profile: AbiProfile
) -> None:
    report = check_image(
        debian_kernel,
        abi_profile=profile,
        arch="x86_64",
        cmdline=b"console=ttyS0 quiet",
    )
    assert report.ok, report.failures
    assert report.kind is ImageKind.BZIMAGE
    assert names(report) == BZIMAGE_ORDER
    assert report.setup_header is not None
    assert report.to_dict()["ok"] is True


@pytest.mark.parametrize("profile", [AbiProfile.MK2, AbiProfile.MK_MASTER])
def test_stock_debian_bzimage_fails_multikernel_profiles_on_its_payload_note(
    debian_kernel_bytes: bytes, profile: AbiProfile
) -> None:
    """The payload is inflated and its ELF checked, as kerf extracts it: a stock kernel
    passes every bzImage rule and the ELF header rules, and fails only the note."""
    report = check_image(debian_kernel_bytes, abi_profile=profile, arch="x86_64")
    assert report.kind is ImageKind.BZIMAGE
    assert names(report) == [r for r in BZIMAGE_ORDER if r is not RuleName.CMDLINE_SIZE] + ELF_ORDER
    assert only_failure(report) is RuleName.MK_NOTE
    assert "not a multikernel vmlinux" in report.failures[0].detail
    assert report.elf is not None and report.elf.machine == "EM_X86_64"


def test_debian_kernel_cut_short_is_refused(debian_kernel_bytes: bytes) -> None:
    """27 KB off the end leaves the payload whole but loses the decompressor's tail."""
    report = check_image(debian_kernel_bytes[: -27 * 1024], abi_profile="v2", arch="x86_64")
    assert only_failure(report) is RuleName.NOT_TRUNCATED
    assert "the setup header declares" in report.failures[0].detail
    inside = check_image(debian_kernel_bytes[: len(debian_kernel_bytes) // 2], abi_profile="v2", arch="x86_64")
    assert [r.name for r in inside.failures] == [RuleName.NOT_TRUNCATED, RuleName.PAYLOAD]


def test_signature_appended_after_the_declared_size_is_fine(debian_kernel_bytes: bytes) -> None:
    # sbsign appends the Authenticode signature past syssize*16.
    assert check_image(debian_kernel_bytes + bytes(2048), abi_profile="v2", arch="x86_64").ok


def test_debian_vmlinux_lacks_the_multikernel_note(debian_kernel_bytes: bytes) -> None:
    # The payload is the real stock vmlinux ELF: right class, machine and type, but built
    # without the multikernel tree, so the note rule must be the one that fails.
    vmlinux = decompress_payload(debian_kernel_bytes)
    for profile in ("mk2", "mk-master"):
        report = check_image(vmlinux, abi_profile=profile, arch="x86_64")
        assert report.kind is ImageKind.ELF_VMLINUX
        assert only_failure(report) is RuleName.MK_NOTE
        assert "not a multikernel vmlinux" in report.failures[0].detail
    assert kernel_release(vmlinux) == kernel_release(debian_kernel_bytes)


# --- mangled bzImage headers ------------------------------------------------------------------


def _put(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def _clear_xlf(data: bytes, bit: int) -> bytes:
    (xlf,) = struct.unpack_from("<H", data, 0x236)
    return _put(data, 0x236, "<H", xlf & ~bit)


def _setup_beyond_file(data: bytes) -> bytes:
    # 255 setup sectors need 128 KiB; cut the file short of that.
    return _put(data, 0x1F1, "<B", 255)[: 255 * 512]


MANGLES: dict[str, tuple[Callable[[bytes], bytes], RuleName | tuple[RuleName, ...]]] = {
    "truncated-1000": (lambda d: d[:1000], RuleName.FILE_SIZE),
    "no-hdrs": (lambda d: d[:0x202] + b"HdrZ" + d[0x206:], RuleName.HDRS_MAGIC),
    "boot-flag": (lambda d: _put(d, 0x1FE, "<H", 0x55AA), RuleName.BOOT_FLAG),
    "protocol-2.11": (
        lambda d: _put(d, 0x206, "<H", 0x020B),
        RuleName.PROTOCOL_VERSION,
    ),
    "zimage": (lambda d: _put(d, 0x211, "<B", d[0x211] & ~1), RuleName.LOADED_HIGH),
    "no-kernel-64": (lambda d: _clear_xlf(d, 0x01), RuleName.XLF_KERNEL_64),
    "no-above-4g": (lambda d: _clear_xlf(d, 0x02), RuleName.XLF_ABOVE_4G),
    # the payload moves with the setup sectors, past the end of the cut file
    "setup-beyond-file": (_setup_beyond_file, (RuleName.NOT_TRUNCATED, RuleName.PAYLOAD)),
}


@pytest.fixture(params=["synthetic", "debian"])
def bzimage(request: pytest.FixtureRequest) -> bytes:
    fixture = (
        "synthetic_bzimage" if request.param == "synthetic" else "debian_kernel_bytes"
    )
    image: bytes = request.getfixturevalue(fixture)
    return image


@pytest.mark.parametrize("mangle", list(MANGLES))
def test_mangled_header_fails_its_rule(bzimage: bytes, mangle: str) -> None:
    mutate, expected = MANGLES[mangle]
    assert check_image(bzimage, abi_profile="v2", arch="x86_64").ok  # the base is good
    report = check_image(
        mutate(bzimage), abi_profile="v2", arch="x86_64", cmdline=b"quiet"
    )
    wanted = expected if isinstance(expected, tuple) else (expected,)
    assert tuple(r.name for r in report.failures) == wanted, report.rules
    # The rules run in the kernel's order: everything before the failure passed.
    assert names(report) == BZIMAGE_ORDER[: len(report.rules)]


def _flip_payload_byte(image: bytes) -> bytes:
    out = bytearray(image)
    hdr = parse_setup_header(image)
    out[hdr.payload_file_offset + hdr.payload_length // 2] ^= 0x40
    return bytes(out)


@pytest.mark.parametrize(
    "mutate",
    [_flip_payload_byte, lambda d: _put(d, 0x24C, "<I", struct.unpack_from("<I", d, 0x24C)[0] - 3)],
    ids=["bit-flip", "payload-length-short"],
)
def test_corrupt_payload_fails_the_payload_rule(synthetic_bzimage: bytes, mutate: Callable[[bytes], bytes]) -> None:
    report = check_image(mutate(synthetic_bzimage), abi_profile="v2", arch="x86_64")
    assert only_failure(report) is RuleName.PAYLOAD, report.rules


def test_payload_size_trailer_must_match(make_bzimage: BzImageFactory) -> None:
    inner = b"Linux version 9.8.7-synthetic " + bytes(100)
    stream = gzip.compress(inner, mtime=0)
    assert check_image(make_bzimage(stream, size_append=len(inner)), abi_profile="v2", arch="x86_64").ok
    report = check_image(make_bzimage(stream, size_append=len(inner) + 1), abi_profile="v2", arch="x86_64")
    assert only_failure(report) is RuleName.PAYLOAD
    assert "last 4 bytes declare" in report.failures[0].detail


def test_structural_failures_stop_the_list(synthetic_bzimage: bytes) -> None:
    report = check_image(synthetic_bzimage[:1000], abi_profile="v2", arch="x86_64")
    assert names(report) == [RuleName.FILE_SIZE]
    report = check_image(
        _put(synthetic_bzimage, 0x206, "<H", 0x020B), abi_profile="v2", arch="x86_64"
    )
    assert names(report)[-1] is RuleName.PROTOCOL_VERSION  # no xloadflags before 2.12


def test_independent_failures_are_all_reported(synthetic_bzimage: bytes) -> None:
    image = _clear_xlf(synthetic_bzimage, 0x03)
    report = check_image(image, abi_profile="v2", arch="x86_64", cmdline=b"x" * 3000)
    assert [r.name for r in report.failures] == [
        RuleName.XLF_KERNEL_64,
        RuleName.XLF_ABOVE_4G,
        RuleName.CMDLINE_SIZE,
    ]


@pytest.mark.parametrize(
    ("cmdline", "ok"),
    [
        (b"x" * 2016, True),  # 2017 with NUL + 30 reserved = 2047 = cmdline_size
        (b"x" * 2016 + b"\0", True),  # an explicit NUL is not counted twice
        (b"x" * 2017, False),
        (b"x" * 2047, False),
    ],
    ids=["at-limit", "at-limit-nul", "one-over", "cmdline-size"],
)
def test_cmdline_limit(bzimage: bytes, cmdline: bytes, ok: bool) -> None:
    report = check_image(bzimage, abi_profile="v2", arch="x86_64", cmdline=cmdline)
    assert report.ok is ok
    assert [r.name for r in report.failures] == ([] if ok else [RuleName.CMDLINE_SIZE])


def test_bad_kernel_version_pointer_is_a_failed_rule(synthetic_bzimage: bytes) -> None:
    report = check_image(
        _put(synthetic_bzimage, 0x20E, "<H", 0x7000), abi_profile="v2", arch="x86_64"
    )
    assert only_failure(report) is RuleName.SETUP_HEADER
    assert "kernel_version" in report.failures[0].detail


# --- ELF vmlinux and the multikernel note ----------------------------------------------------


def _mk_note(
    note_type: int, desc: bytes = (0x1000).to_bytes(8, "little")
) -> tuple[bytes, int, bytes]:
    return (b"Linux", note_type, desc)


def test_bin_true_fails_the_note_rule() -> None:
    data = Path("/bin/true").read_bytes()
    for profile in ("mk2", "mk-master"):
        report = check_image(Path("/bin/true"), abi_profile=profile, arch="x86_64")
        assert report.kind is ImageKind.ELF_VMLINUX
        assert names(report) == ELF_ORDER
        assert only_failure(report) is RuleName.MK_NOTE
        assert "no 'Linux' note" in report.failures[0].detail
    # /bin/true is no bzImage either.
    assert (
        only_failure(check_image(data, abi_profile="v2", arch="x86_64"))
        is RuleName.HDRS_MAGIC
    )


def test_synthetic_elf_notes_read_by_pyelftools(make_elf: ElfFactory) -> None:
    info = read_elf(make_elf([(b"GNU", 3, b"buildid!"), _mk_note(MK_NOTE_TYPE)]))
    assert (info.elf_class, info.machine, info.type) == (64, "EM_X86_64", "ET_EXEC")
    assert [(n.name, n.type, n.namesz) for n in info.notes] == [
        ("GNU", 3, 4),
        ("Linux", MK_NOTE_TYPE, 6),
    ]
    (note,) = multikernel_notes(info)
    assert note.entry_offset == 0x1000


# One row per check in find_multikernel_entry_note() (arch/x86/kernel/kexec-vmlinux.c, read
# at psndna88/AGNi-xanmod_x86-64 342a1c1d): n_type 0x4d4b, n_namesz 6, n_descsz 8, name
# "Linux"; an entry of 0 is reported as "not found" and the load fails with ENOEXEC.
NOTE_ROWS = [
    ("type-0x4d4b", [_mk_note(MK_NOTE_TYPE)], True, "entry offset 0x1000"),
    ("unconfirmed-0x4D4B0002", [_mk_note(UNCONFIRMED_NOTE_TYPE)], False, "no kernel loader reads"),
    ("desc-16-bytes", [_mk_note(MK_NOTE_TYPE, bytes(8) + b"\x01" + bytes(7))], False, "16-byte descriptor"),
    ("entry-0", [_mk_note(MK_NOTE_TYPE, bytes(8))], False, "treats it as missing"),
    ("name-linux2", [(b"Linux2", MK_NOTE_TYPE, (0x1000).to_bytes(8, "little"))], False, "no 'Linux' note"),
    ("second-note-wins", [_mk_note(UNCONFIRMED_NOTE_TYPE), _mk_note(MK_NOTE_TYPE)], True, "0x1000"),
]


@pytest.mark.parametrize("profile", ["mk2", "mk-master"])
@pytest.mark.parametrize(("notes", "ok", "detail"), [r[1:] for r in NOTE_ROWS], ids=[r[0] for r in NOTE_ROWS])
def test_note_rules_follow_the_kernel_loader(
    make_elf: ElfFactory, profile: str, notes: list[tuple[bytes, int, bytes]], ok: bool, detail: str
) -> None:
    report = check_image(make_elf(notes), abi_profile=profile, arch="x86_64")
    assert report.ok is ok
    assert report.rules[-1].name is RuleName.MK_NOTE and detail in report.rules[-1].detail


def test_note_name_size_must_be_six(make_elf: ElfFactory) -> None:
    elf = bytearray(make_elf([(b"Linux\0\0", MK_NOTE_TYPE, (0x1000).to_bytes(8, "little"))]))
    # pyelftools reads the name up to its first NUL, "Linux"; the loader compares namesz.
    assert check_image(bytes(elf), abi_profile="mk2", arch="x86_64").failures[0].detail.count("namesz 8")


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"notes": [_mk_note(MK_NOTE_TYPE, b"\0" * 4)]}, RuleName.MK_NOTE),
        ({"notes": []}, RuleName.MK_NOTE),
        ({"notes": [_mk_note(MK_NOTE_TYPE)], "elf_class": 32}, RuleName.ELF_CLASS),
        (
            {"notes": [_mk_note(MK_NOTE_TYPE)], "machine": EM_AARCH64},
            RuleName.ELF_MACHINE,
        ),
        (
            {"notes": [_mk_note(MK_NOTE_TYPE)], "elf_type": ET_REL},
            RuleName.ELF_TYPE,
        ),
    ],
    ids=["desc-4-bytes", "no-pt-note", "elf32", "aarch64", "et-rel"],
)
def test_elf_rule_failures(
    make_elf: ElfFactory, kwargs: dict[str, object], rule: RuleName
) -> None:
    report = check_image(make_elf(**kwargs), abi_profile="mk2", arch="x86_64")
    assert only_failure(report) is rule
    assert report.rules[-1].name is rule  # a structural ELF failure ends the list


@pytest.mark.parametrize("profile", ["mk2", "mk-master"])
def test_multikernel_profiles_accept_elf_or_bzimage_with_the_note_inside(
    make_elf: ElfFactory, make_bzimage: BzImageFactory, synthetic_bzimage: bytes, profile: str
) -> None:
    vmlinux = make_elf([_mk_note(MK_NOTE_TYPE)])
    elf = check_image(vmlinux, abi_profile=profile, arch="x86_64")
    assert elf.ok and elf.kind is ImageKind.ELF_VMLINUX and elf.elf is not None
    packed = make_bzimage(gzip.compress(vmlinux, mtime=0))
    raw = check_image(packed, abi_profile=profile, arch="x86_64")
    assert raw.ok, raw.failures
    assert raw.kind is ImageKind.BZIMAGE and raw.elf is not None
    assert names(raw) == [r for r in BZIMAGE_ORDER if r is not RuleName.CMDLINE_SIZE] + ELF_ORDER
    # a bzImage whose payload is no multikernel ELF is refused on the payload's rules
    stock = check_image(synthetic_bzimage, abi_profile=profile, arch="x86_64")
    assert only_failure(stock) is RuleName.ELF_MAGIC and stock.failures[0].detail.startswith("payload: ")


def test_overrunning_note_is_a_failed_header_rule(make_elf: ElfFactory) -> None:
    elf = bytearray(make_elf([_mk_note(MK_NOTE_TYPE)]))
    struct.pack_into("<I", elf, 64 + 2 * 56 + 4, 4096)  # descsz of the first note
    report = check_image(bytes(elf), abi_profile="mk2", arch="x86_64")
    assert only_failure(report) is RuleName.ELF_HEADER
    with pytest.raises(FormatError):
        read_elf(bytes(elf))


C_SOURCE = r"""
__attribute__((section(".banner"), used))
const char linux_banner[] = "Linux version 1.2.3-from-symbol (tester@example) #1\n";
const char *decoy = "Linux version 0.0.1-decoy-in-rodata";
__asm__(".pushsection .note.multikernel, \"a\", @note\n"
        ".balign 4\n.long 6\n.long 8\n.long NOTE_TYPE\n.asciz \"Linux\"\n.balign 4\n"
        ".quad 0x1000\n.popsection\n");
int main(void) { return decoy[0]; }
"""


@pytest.mark.parametrize(
    ("link_flags", "elf_type"),
    [(["-no-pie"], "ET_EXEC"), (["-pie"], "ET_DYN")],
    ids=["exec", "pie"],
)
@pytest.mark.parametrize("profile", [AbiProfile.MK2, AbiProfile.MK_MASTER])
def test_gcc_linked_elf_with_note(
    cc: str, tmp_path: Path, link_flags: list[str], elf_type: str, profile: AbiProfile
) -> None:
    """A real toolchain's output: ld puts the note section into a PT_NOTE segment."""
    source = tmp_path / "vmlinux.c"
    source.write_text(C_SOURCE.replace("NOTE_TYPE", f"0x{NOTE_TYPES[profile]:x}"))
    out = tmp_path / "vmlinux"
    run([cc, "-O1", *link_flags, "-o", out, source], stage="test", timeout_s=120)
    report = check_image(out, abi_profile=profile, arch="x86_64")
    assert report.ok, report.failures
    assert report.elf is not None and report.elf.type == elf_type
    # linux_banner is found through the symbol table, not the decoy in .rodata ...
    assert kernel_release(out.read_bytes()) == "1.2.3-from-symbol"
    # ... and once stripped, the .rodata scan is what is left.
    run(["strip", out], stage="test", timeout_s=60)
    assert kernel_release(out.read_bytes()) == "0.0.1-decoy-in-rodata"


# --- arm64 ------------------------------------------------------------------------------


def test_arm64_image_passes(make_arm64: Callable[..., bytes]) -> None:
    report = check_image(make_arm64(), abi_profile="none", arch=Arch.ARM64)
    assert report.ok and report.kind is ImageKind.ARM64_IMAGE
    assert names(report) == [
        RuleName.ARM64_HEADER_LENGTH,
        RuleName.ARM64_MAGIC,
        RuleName.ARM64_IMAGE_SIZE,
        RuleName.ARM64_ENDIANNESS,
        RuleName.ARM64_PAGE_SIZE,
    ]


@pytest.mark.parametrize(
    ("image_kwargs", "page_sizes", "rule"),
    [
        ({"length": 63}, None, RuleName.ARM64_HEADER_LENGTH),
        ({"image_size": 0}, None, RuleName.ARM64_IMAGE_SIZE),
        ({"flags": 0x0B}, None, RuleName.ARM64_ENDIANNESS),
        ({"flags": 0x06}, frozenset({4096}), RuleName.ARM64_PAGE_SIZE),
    ],
    ids=["short", "image-size-0", "big-endian", "64k-on-4k-cpu"],
)
def test_arm64_failures(
    make_arm64: Callable[..., bytes],
    image_kwargs: dict[str, int],
    page_sizes: frozenset[int] | None,
    rule: RuleName,
) -> None:
    report = check_image(
        make_arm64(**image_kwargs),
        abi_profile="v2",
        arch="arm64",
        arm64_page_sizes=page_sizes or frozenset({4096, 16384, 65536}),
    )
    assert only_failure(report) is rule


def test_x86_image_on_arm64(
    synthetic_bzimage: bytes, make_arm64: Callable[..., bytes]
) -> None:
    report = check_image(synthetic_bzimage, abi_profile="v2", arch="arm64")
    assert (
        only_failure(report) is RuleName.ARM64_MAGIC
        and "looks like bzimage" in report.rules[-1].detail
    )
    report = check_image(make_arm64(), abi_profile="mk2", arch="arm64")
    assert only_failure(report) is RuleName.PROFILE_ARCH


# --- inputs and kinds ----------------------------------------------------------------------


def test_bad_choices_and_paths(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        check_image(b"", abi_profile="v3", arch="x86_64")
    with pytest.raises(UsageError):
        check_image(b"", abi_profile="v2", arch="riscv64")
    with pytest.raises(InputError):
        check_image(tmp_path / "missing", abi_profile="v2", arch="x86_64")


def test_detect_kind(
    synthetic_bzimage: bytes, make_elf: ElfFactory, make_arm64: Callable[..., bytes]
) -> None:
    assert detect_kind(synthetic_bzimage) is ImageKind.BZIMAGE
    assert detect_kind(make_elf()) is ImageKind.ELF_VMLINUX
    assert detect_kind(make_arm64()) is ImageKind.ARM64_IMAGE
    assert detect_kind(b"") is ImageKind.UNKNOWN


# --- fuzz: a report or FormatError, nothing else --------------------------------------------

PROFILES = st.sampled_from(list(AbiProfile))
ARCHES = st.sampled_from(list(Arch))


def _check_any(data: bytes, profile: AbiProfile, arch: Arch) -> None:
    try:
        report = check_image(
            data, abi_profile=profile, arch=arch, cmdline=b"console=ttyS0"
        )
    except FormatError:
        return
    assert report.rules and (report.ok or report.failures)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096), PROFILES, ARCHES)
def test_fuzz_check_image_random(data: bytes, profile: AbiProfile, arch: Arch) -> None:
    _check_any(data, profile, arch)


@settings(max_examples=300, deadline=None)
@given(st.data(), PROFILES)
def test_fuzz_check_image_mutated(
    synthetic_bzimage: bytes,
    make_elf: ElfFactory,
    data: st.DataObject,
    profile: AbiProfile,
) -> None:
    base = data.draw(
        st.sampled_from(
            [
                synthetic_bzimage,
                make_elf(
                    [(b"GNU", 1, b"abcdefghijklmnop"), _mk_note(MK_NOTE_TYPE)]
                ),
            ]
        )
    )
    image = bytearray(base)
    for _ in range(data.draw(st.integers(1, 6))):
        image[data.draw(st.integers(0, min(len(image), 0x480) - 1))] = data.draw(
            st.integers(0, 255)
        )
    _check_any(
        bytes(image[: data.draw(st.integers(0, len(image)))]), profile, Arch.X86_64
    )
