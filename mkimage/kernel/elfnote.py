"""Read an ELF image's identity and PT_NOTE notes, and find the multikernel note.

The multikernel x86 ELF loader (``kexec-vmlinux``) accepts a vmlinux only if a PT_NOTE
segment carries a note named "Linux" (namesz 6) of type 0x4d4b ("MK") whose 8-byte
descriptor is the offset of the multikernel entry point; an offset of 0 counts as no
note.  Read from ``find_multikernel_entry_note`` in ``arch/x86/kernel/kexec-vmlinux.c``
(psndna88/AGNi-xanmod_x86-64 @ 342a1c1d08cb46f2d8315a7b7e9cf503b1aeed30, a tree carrying
the multikernel series; the search index holds no copy of that file for multikernel/linux,
whose kexec-bzimage64.c @ 758894fd94bbbd6252f4a3d8ecc97b8601727399 refers to the
"vmlinux" loader).  0x4D4B0002, once assumed for mk-master (``multikernel-abi.md`` §9),
appears in no kernel source, only in third-party test scripts (§14), so no profile
accepts it; it is recognised only to say so.
"""

from __future__ import annotations

import functools
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mkimage.errors import FormatError

# pyelftools (about 20 ms to import) is loaded only when an ELF image is read: verifying
# or inspecting a bundle whose kernel is a bzImage never needs it.
if TYPE_CHECKING:
    from elftools.elf.elffile import ELFFile
    from elftools.elf.segments import NoteSegment

ELF_MAGIC = b"\x7fELF"

MK_NOTE_NAME = "Linux"
MK_NOTE_NAMESZ = 6  # "Linux" and its NUL; the loader compares namesz exactly
MK_NOTE_TYPE = 0x4D4B
# Seen only in third-party scripts, never in a kernel loader: recognised to explain a refusal.
UNCONFIRMED_NOTE_TYPE = 0x4D4B0002
MK_NOTE_DESC_SIZE = 8  # a u64: offset of multikernel_startup_64 in the image


@functools.cache
def pyelftools_errors() -> tuple[type[Exception], ...]:
    """What pyelftools raises for malformed input: its own errors, its bundled construct
    library's, and (for short or odd reads) plain Python errors; all mean "not a valid ELF"."""
    from elftools.common.exceptions import ELFError
    from elftools.construct.core import ConstructError

    return (
        ELFError,
        ConstructError,
        struct.error,
        ValueError,
        EOFError,
        IndexError,
        OverflowError,  # seeking to a 64-bit offset from a corrupt header
    )


@dataclass(frozen=True, slots=True)
class ElfNote:
    name: str | None
    type: int
    desc: bytes
    offset: int  # file offset of the note header
    namesz: int = MK_NOTE_NAMESZ

    @property
    def entry_offset(self) -> int | None:
        """The multikernel note's descriptor as a little-endian u64, if 8 bytes long."""
        if len(self.desc) != MK_NOTE_DESC_SIZE:
            return None
        return int.from_bytes(self.desc, "little")


@dataclass(frozen=True, slots=True)
class ElfInfo:
    elf_class: int  # 32 or 64
    little_endian: bool
    machine: str  # pyelftools' name, e.g. "EM_X86_64"
    type: str  # "ET_EXEC", "ET_DYN", ...
    entry: int
    notes: tuple[ElfNote, ...]  # from PT_NOTE segments, in file order
    has_note_segment: bool

    def notes_named(self, name: str) -> Iterator[ElfNote]:
        return (n for n in self.notes if n.name == name)


def is_elf(data: bytes) -> bool:
    return data.startswith(ELF_MAGIC)


@functools.cache
def _note_type_numbers() -> dict[str, int]:
    """pyelftools turns note types it knows (1..5 for non-core files, more for cores) into
    names; the multikernel checks compare numbers, so map names back."""
    from elftools.elf.enums import ENUM_CORE_NOTE_N_TYPE, ENUM_NOTE_N_TYPE

    return {
        **{k: v for k, v in ENUM_NOTE_N_TYPE.items() if isinstance(v, int)},
        **{k: v for k, v in ENUM_CORE_NOTE_N_TYPE.items() if isinstance(v, int)},
    }


def _note_type(raw: object) -> int:
    if isinstance(raw, int):
        return raw
    numbers = _note_type_numbers()
    if isinstance(raw, str) and raw in numbers:
        return numbers[raw]
    raise FormatError(f"note type: cannot interpret {raw!r}")


def _segment_notes(segment: NoteSegment, size: int) -> Iterator[ElfNote]:
    for note in segment.iter_notes():
        name = note["n_name"]
        desc = bytes(note["n_descdata"])
        if len(desc) != note["n_descsz"]:
            raise FormatError(
                f"note: descriptor of {note['n_descsz']} bytes runs past the end of the "
                f"{size}-byte file",
                offset=int(note["n_offset"]),
            )
        yield ElfNote(
            name=name if isinstance(name, str) else None,
            type=_note_type(note["n_type"]),
            desc=desc,
            offset=int(note["n_offset"]),
            namesz=int(note["n_namesz"]),
        )


def _check_phdr_table(elf: ELFFile, size: int) -> None:
    """The program header table must lie inside the file, with entries of the size the
    class defines, before any segment is read from it."""
    header = elf.header
    entry_size = elf.structs.Elf_Phdr.sizeof()
    count = int(header["e_phnum"])
    if count and header["e_phentsize"] != entry_size:
        raise FormatError(
            f"e_phentsize: {header['e_phentsize']}, expected {entry_size} for "
            f"ELFCLASS{elf.elfclass}",
            offset=0x36 if elf.elfclass == 64 else 0x2A,
        )
    start = int(header["e_phoff"])
    if start + count * entry_size > size:
        raise FormatError(
            f"e_phoff: {count} program headers at {start} run past the {size}-byte file",
            offset=0x20 if elf.elfclass == 64 else 0x1C,
        )


def read_elf(data: bytes) -> ElfInfo:
    """Decode the ELF header and all PT_NOTE notes; FormatError on malformed input."""
    if not is_elf(data):
        raise FormatError(
            f"ELF magic: expected {ELF_MAGIC!r}, got {data[:4]!r}", offset=0
        )
    from elftools.elf.elffile import ELFFile
    from elftools.elf.segments import NoteSegment

    try:
        elf = ELFFile(io.BytesIO(data))
        header = elf.header
        _check_phdr_table(elf, len(data))
        notes: list[ElfNote] = []
        has_note_segment = False
        for index in range(elf.num_segments()):
            segment = elf.get_segment(index)
            if not isinstance(segment, NoteSegment):
                continue
            has_note_segment = True
            end = segment["p_offset"] + segment["p_filesz"]
            if end > len(data):
                raise FormatError(
                    f"PT_NOTE segment {index}: [{segment['p_offset']}, {end}) exceeds the "
                    f"{len(data)}-byte file",
                    offset=int(segment["p_offset"]),
                )
            notes.extend(_segment_notes(segment, len(data)))
        return ElfInfo(
            elf_class=elf.elfclass,
            little_endian=elf.little_endian,
            machine=str(header["e_machine"]),
            type=str(header["e_type"]),
            entry=int(header["e_entry"]),
            notes=tuple(notes),
            has_note_segment=has_note_segment,
        )
    except pyelftools_errors() as e:
        raise FormatError(f"ELF: {e}", offset=0) from e


def multikernel_notes(info: ElfInfo) -> list[ElfNote]:
    """Notes named "Linux" carrying the multikernel type or the unconfirmed one, in file order."""
    types = (MK_NOTE_TYPE, UNCONFIRMED_NOTE_TYPE)
    return [n for n in info.notes_named(MK_NOTE_NAME) if n.type in types]
