"""The strict ustar writer and reader: canonical bytes out, only canonical bytes back in."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mkimage.bundle.tarball import (
    BLOCK_SIZE,
    RECORD_SIZE,
    MemberHeader,
    iter_data,
    read_members,
    write_archive,
    write_header,
)
from mkimage.errors import FormatError
from tests.conftest import needs_tool

EPOCH = 1700000000

# The ustar layout, restated here from POSIX rather than imported, so the tests check the
# module against the standard and not against itself.
FIELDS = {
    "name": (0, 100),
    "mode": (100, 8),
    "uid": (108, 8),
    "gid": (116, 8),
    "size": (124, 12),
    "mtime": (136, 12),
    "chksum": (148, 8),
    "typeflag": (156, 1),
    "linkname": (157, 100),
    "magic": (257, 6),
    "version": (263, 2),
    "uname": (265, 32),
    "gname": (297, 32),
    "devmajor": (329, 8),
    "devminor": (337, 8),
    "prefix": (345, 155),
    "pad": (500, 12),
}



def make_archive(members: list[tuple[str, bytes]], mtime: int = EPOCH) -> bytes:
    out = io.BytesIO()
    write_archive(out, [(name, len(data), [data]) for name, data in members], mtime)
    return out.getvalue()


def read_all(data: bytes) -> list[tuple[MemberHeader, bytes]]:
    f = io.BytesIO(data)
    return [(header, b"".join(iter_data(f, header))) for header in read_members(f)]


def read_error(data: bytes) -> FormatError:
    with pytest.raises(FormatError) as info:
        read_all(data)
    return info.value


def set_field(data: bytes, header_offset: int, field: str, value: bytes) -> bytes:
    """Overwrite one header field (NUL padded) and fix the checksum, as a forger would."""
    start, length = FIELDS[field]
    assert len(value) <= length
    buf = bytearray(data)
    at = header_offset + start
    buf[at : at + length] = value.ljust(length, b"\0")
    return fix_checksum(bytes(buf), header_offset)


def fix_checksum(data: bytes, header_offset: int) -> bytes:
    buf = bytearray(data)
    block = buf[header_offset : header_offset + BLOCK_SIZE]
    block[148:156] = b" " * 8
    buf[header_offset + 148 : header_offset + 156] = b"%06o\0 " % sum(block)
    return bytes(buf)


TWO = [("a.txt", b"hello\n"), ("dir/b.bin", bytes(range(256)) * 3)]


# --- writing -----------------------------------------------------------------------------


def test_write_header_fields_are_canonical() -> None:
    header = write_header("boot/bzImage", 1234, EPOCH)
    assert len(header) == BLOCK_SIZE

    def field(name: str) -> bytes:
        start, length = FIELDS[name]
        return header[start : start + length]

    assert field("name") == b"boot/bzImage".ljust(100, b"\0")
    assert field("mode") == b"0000644\0"
    assert field("uid") == field("gid") == b"0000000\0"
    assert field("size") == b"%011o\0" % 1234
    assert field("mtime") == b"%011o\0" % EPOCH
    assert field("typeflag") == b"0"
    assert field("linkname") == bytes(100)
    assert field("magic") == b"ustar\0"
    assert field("version") == b"00"
    assert field("uname") == field("gname") == b"root".ljust(32, b"\0")
    assert field("devmajor") == field("devminor") == b"0000000\0"
    assert field("prefix") == bytes(155) and field("pad") == bytes(12)
    unsummed = header[:148] + b" " * 8 + header[156:]
    assert field("chksum") == b"%06o\0 " % sum(unsummed)


@pytest.mark.parametrize("size", [0, 1, 511, 512, 513, 10000])
def test_round_trip_sizes(size: int) -> None:
    payload = os.urandom(size)
    data = make_archive([("x", payload), ("y", b"tail")])
    assert len(data) % RECORD_SIZE == 0
    members = read_all(data)
    assert [(h.name, h.size, h.mtime) for h, _ in members] == [("x", size, EPOCH), ("y", 4, EPOCH)]
    assert members[0][1] == payload and members[1][1] == b"tail"
    assert members[0][0].data_offset == BLOCK_SIZE
    assert members[1][0].header_offset == BLOCK_SIZE + -(-size // BLOCK_SIZE) * BLOCK_SIZE


def test_archive_length_is_a_whole_number_of_records_with_two_end_blocks() -> None:
    # 18 data+header blocks leave exactly the two end blocks in the first record.
    exact = make_archive([("a", bytes(17 * BLOCK_SIZE))])
    assert len(exact) == RECORD_SIZE
    spill = make_archive([("a", bytes(17 * BLOCK_SIZE + 1))])
    assert len(spill) == 2 * RECORD_SIZE
    assert make_archive([]) == bytes(RECORD_SIZE)
    assert read_all(bytes(RECORD_SIZE)) == []


def test_write_archive_returns_bytes_written() -> None:
    out = io.BytesIO()
    total = write_archive(out, [("a", 3, [b"a", b"bc"])], EPOCH)
    assert total == len(out.getvalue()) == RECORD_SIZE


def test_write_archive_streams_without_holding_members() -> None:
    chunk = os.urandom(1 << 16)
    count = 512  # 32 MiB, produced lazily and never stored by the sink

    class Sink:
        def __init__(self) -> None:
            self.digest = hashlib.sha256()
            self.biggest = 0

        def write(self, data: bytes) -> int:
            self.digest.update(data)
            self.biggest = max(self.biggest, len(data))
            return len(data)

    def chunks() -> Iterator[bytes]:
        for _ in range(count):
            yield chunk

    sink = Sink()
    size = len(chunk) * count
    total = write_archive(sink, [("big", size, chunks())], EPOCH)  # type: ignore[arg-type]
    assert total == -(-(BLOCK_SIZE + size + 2 * BLOCK_SIZE) // RECORD_SIZE) * RECORD_SIZE
    assert sink.digest.digest() == hashlib.sha256(
        write_header("big", size, EPOCH) + chunk * count + bytes(total - BLOCK_SIZE - size)
    ).digest()
    assert sink.biggest <= len(chunk) + BLOCK_SIZE


@pytest.mark.parametrize(
    "chunks", [[b"abc", b"d"], [b"ab"], []], ids=["too-many", "too-few", "none"]
)
def test_write_archive_rejects_chunks_not_matching_size(chunks: list[bytes]) -> None:
    with pytest.raises(ValueError, match="declared 3"):
        write_archive(io.BytesIO(), [("a", 3, chunks)], EPOCH)


def test_write_archive_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="twice"):
        write_archive(io.BytesIO(), [("a", 0, []), ("a", 0, [])], EPOCH)


@pytest.mark.parametrize(
    "name",
    ["", "/abs", "../up", "a/../b", "a//b", "./a", "a/.", "a/", "a\\b", "caf\u00e9", "tab\there",
     "x" * 101],
)
def test_write_header_rejects_bad_names(name: str) -> None:
    with pytest.raises(ValueError):
        write_header(name, 0, EPOCH)


def test_write_header_accepts_longest_name() -> None:
    name = "d/" + "x" * 98
    assert read_all(make_archive([(name, b"1")]))[0][0].name == name


@pytest.mark.parametrize(("size", "mtime"), [(-1, 0), (8 << 30, 0), (0, -1), (0, 8 << 30)])
def test_write_header_rejects_out_of_range_numbers(size: int, mtime: int) -> None:
    with pytest.raises(ValueError):
        write_header("a", size, mtime)


# --- interoperability --------------------------------------------------------------------


def test_gnu_tar_lists_and_extracts(tmp_path: Path) -> None:
    needs_tool("tar")
    archive = tmp_path / "a.tar"
    archive.write_bytes(make_archive(TWO))
    listing = subprocess.run(
        ["tar", "-tvf", str(archive)],
        check=True, capture_output=True, text=True, env={"TZ": "UTC", "LC_ALL": "C"},
    ).stdout.splitlines()
    assert [line.split()[-1] for line in listing] == ["a.txt", "dir/b.bin"]
    assert all(line.startswith("-rw-r--r-- root/root ") for line in listing)
    assert "2023-11-14 22:13" in listing[0]
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True)
    for name, data in TWO:
        assert (out / name).read_bytes() == data


def test_gnu_tar_writes_the_same_bytes(tmp_path: Path) -> None:
    """GNU tar, asked for ustar with root ownership, produces our archive byte for byte."""
    needs_tool("tar")
    for name, data in TWO:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    subprocess.run(
        ["tar", "--format=ustar", "--owner=root:0", "--group=root:0", "--mode=0644",
         f"--mtime=@{EPOCH}", "--no-recursion", "-cf", "gnu.tar", *[n for n, _ in TWO]],
        check=True, cwd=tmp_path,
    )
    assert (tmp_path / "gnu.tar").read_bytes() == make_archive(TWO)


def test_python_tarfile_reads_it() -> None:
    with tarfile.open(fileobj=io.BytesIO(make_archive(TWO)), mode="r:") as tar:
        infos = tar.getmembers()
        assert [(i.name, i.size, i.mode, i.uname, i.mtime) for i in infos] == [
            (n, len(d), 0o644, "root", EPOCH) for n, d in TWO
        ]


# --- reading -----------------------------------------------------------------------------


def test_reader_skips_data_the_caller_did_not_read() -> None:
    data = make_archive(TWO)
    f = io.BytesIO(data)
    names = [h.name for h in read_members(f)]
    assert names == ["a.txt", "dir/b.bin"]


def test_reader_skips_partly_read_data() -> None:
    f = io.BytesIO(make_archive(TWO))
    seen = []
    for header in read_members(f):
        seen.append(next(iter_data(f, header, chunk_size=3)))
    assert seen == [b"hel", bytes(range(3))]


def test_iter_data_chunks() -> None:
    f = io.BytesIO(make_archive([("a", b"0123456789")]))
    header = next(read_members(f))
    assert list(iter_data(f, header, chunk_size=4)) == [b"0123", b"4567", b"89"]


def test_archive_inside_a_larger_stream() -> None:
    """Offsets are absolute; record alignment counts from where the archive starts."""
    prefix = b"P" * 100
    f = io.BytesIO(prefix + make_archive(TWO))
    f.seek(len(prefix))
    headers = list(read_members(f))
    assert headers[0].data_offset == len(prefix) + BLOCK_SIZE


def test_reader_needs_seekable_stream() -> None:
    class Pipe(io.RawIOBase):
        def seekable(self) -> bool:
            return False

    with pytest.raises(ValueError):
        list(read_members(Pipe()))  # type: ignore[arg-type]


def test_large_member_single_pass(tmp_path: Path) -> None:
    payload = os.urandom(1 << 20) * 24 + b"end"
    path = tmp_path / "big.tar"
    with path.open("wb") as out:
        write_archive(out, [("big", len(payload), [payload[i : i + 65536] for i in
                                                    range(0, len(payload), 65536)])], EPOCH)
    with path.open("rb") as f:
        for header in read_members(f):
            digest = hashlib.sha256()
            for chunk in iter_data(f, header):
                digest.update(chunk)
    assert digest.hexdigest() == hashlib.sha256(payload).hexdigest()


# --- rejection catalogue -----------------------------------------------------------------

ARCHIVE = make_archive(TWO)
SECOND = BLOCK_SIZE * 2  # header offset of dir/b.bin: a.txt takes a header and one block
END = SECOND + 3 * BLOCK_SIZE  # first end-of-archive block: b.bin has a header and 2 blocks


def flip(data: bytes, offset: int, value: int) -> bytes:
    buf = bytearray(data)
    buf[offset] = value
    return bytes(buf)


Mutation = Callable[[bytes], bytes]

REJECTED: dict[str, tuple[Mutation, str, int | None, str]] = {
    # case: (mutation, code, offset, message fragment)
    "checksum-wrong": (lambda d: flip(d, 3, ord("X")), "bad-checksum", 148, "checksum"),
    "checksum-garbage": (lambda d: flip(d, 150, ord("9")), "bad-checksum", 148, "unreadable"),
    "hardlink": (lambda d: set_field(d, 0, "typeflag", b"1"), "link-member", 156, "hard link"),
    "symlink": (lambda d: set_field(d, 0, "typeflag", b"2"), "link-member", 156, "symbolic"),
    "chardev": (lambda d: set_field(d, 0, "typeflag", b"3"), "device-member", 156, "character"),
    "blockdev": (lambda d: set_field(d, 0, "typeflag", b"4"), "device-member", 156, "block"),
    "fifo": (lambda d: set_field(d, 0, "typeflag", b"6"), "device-member", 156, "FIFO"),
    "directory": (lambda d: set_field(d, 0, "typeflag", b"5"), "directory-member", 156, "dir"),
    "pax": (lambda d: set_field(d, 0, "typeflag", b"x"), "bad-member-type", 156, "'x'"),
    "gnu-longname": (lambda d: set_field(d, 0, "typeflag", b"L"), "bad-member-type", 156, "L"),
    "absolute": (lambda d: set_field(d, 0, "name", b"/etc/passwd"), "absolute-path", 0, "/etc"),
    "dotdot": (lambda d: set_field(d, 0, "name", b"a/../../b"), "path-traversal", 0, ".."),
    "empty-component": (lambda d: set_field(d, 0, "name", b"a//b"), "bad-name", 0, "empty"),
    "dot-component": (lambda d: set_field(d, 0, "name", b"./a"), "bad-name", 0, "'.'"),
    "control-char": (lambda d: set_field(d, 0, "name", b"a\x01"), "bad-name", 0, "printable"),
    "non-ascii": (lambda d: set_field(d, 0, "name", b"caf\xe9"), "bad-name", 0, "printable"),
    "backslash": (lambda d: set_field(d, 0, "name", b"a\\b"), "bad-name", 0, "printable"),
    "empty-name": (lambda d: set_field(d, 0, "name", b""), "bad-name", 0, "empty"),
    "duplicate": (lambda d: set_field(d, SECOND, "name", b"a.txt"), "duplicate-member", SECOND,
                  "twice"),
    "size-beyond-eof": (lambda d: set_field(d, SECOND, "size", b"%011o\0" % 99999),
                        "truncated", SECOND + 124, "declares 99999"),
    "cut-in-data": (lambda d: d[: SECOND + BLOCK_SIZE + 100], "truncated", SECOND + 124,
                    "declares"),
    "cut-in-header": (lambda d: d[: SECOND + 100], "truncated", SECOND, "inside a header"),
    "no-end-marker": (lambda d: d[:END], "truncated", END, "marker is missing"),
    "one-end-block": (lambda d: d[: END + BLOCK_SIZE], "truncated", END + BLOCK_SIZE,
                      "end-of-archive"),
    "cut-record-padding": (lambda d: d[:-1], "truncated", RECORD_SIZE - 1, "record padding"),
    "appended-garbage": (lambda d: d + b"garbage", "trailing-data", RECORD_SIZE, "7 bytes"),
    "appended-zero-record": (lambda d: d + bytes(RECORD_SIZE), "trailing-data", RECORD_SIZE,
                             "after"),
    "garbage-in-record-padding": (lambda d: flip(d, RECORD_SIZE - 5, 1), "trailing-data",
                                  RECORD_SIZE - 5, "after the end"),
    "garbage-in-second-end-block": (lambda d: flip(d, END + BLOCK_SIZE, 1), "trailing-data",
                                    END + BLOCK_SIZE, "after the end"),
    "nonzero-data-padding": (lambda d: flip(d, BLOCK_SIZE + 6, ord("!")), "bad-padding",
                             BLOCK_SIZE + 6, "padding"),
    "uname": (lambda d: set_field(d, 0, "uname", b"user"), "non-canonical-header", 265, "uname"),
    "gname": (lambda d: set_field(d, SECOND, "gname", b"wheel"), "non-canonical-header",
              SECOND + 297, "gname"),
    "mode": (lambda d: set_field(d, 0, "mode", b"0000755\0"), "non-canonical-header", 104,
             "mode"),
    "uid": (lambda d: set_field(d, 0, "uid", b"0001750\0"), "non-canonical-header", 111, "uid"),
    "old-regular-type": (lambda d: set_field(d, 0, "typeflag", b"\0"), "non-canonical-header",
                         156, "typeflag"),
    "linkname": (lambda d: set_field(d, 0, "linkname", b"x"), "non-canonical-header", 157,
                 "linkname"),
    "gnu-magic": (lambda d: set_field(d, 0, "magic", b"ustar "), "non-canonical-header", 262,
                  "magic"),
    "version": (lambda d: set_field(d, 0, "version", b" \0"), "non-canonical-header", 263,
                "version"),
    "prefix": (lambda d: set_field(d, 0, "prefix", b"usr"), "non-canonical-header", 345,
               "prefix"),
    "pad": (lambda d: set_field(d, 0, "pad", b"x"), "non-canonical-header", 500, "pad"),
    "devmajor-empty": (lambda d: set_field(d, 0, "devmajor", b""), "non-canonical-header", 329,
                       "devmajor"),
    "name-junk-after-nul": (lambda d: set_field(d, 0, "name", b"a.txt\0junk"),
                            "non-canonical-header", 6, "name"),
    "size-spaces": (lambda d: set_field(d, 0, "size", b" " * 8 + b"6\0"),
                    "non-canonical-header", 124, "size"),
    "size-not-octal": (lambda d: set_field(d, 0, "size", b"0000000000x\0"),
                       "non-canonical-header", 124, "size"),
    "size-underscore": (lambda d: set_field(d, 0, "size", b"000000000_6\0"),
                        "non-canonical-header", 124, "size"),
    "chksum-seven-digits": (lambda d: _seven_digit_checksum(d), "non-canonical-header", 149,
                            "chksum"),
    "mtime-differs": (lambda d: set_field(d, SECOND, "mtime", b"%011o\0" % (EPOCH + 1)),
                      "non-canonical-header", SECOND + 136, "mtime"),
    "mtime-garbage": (lambda d: set_field(d, 0, "mtime", b"soon"), "non-canonical-header", 136,
                      "mtime"),
}


def _seven_digit_checksum(data: bytes) -> bytes:
    """The older "%07o\\0" checksum spelling: valid tar, but not our one canonical form."""
    buf = bytearray(data)
    block = buf[:BLOCK_SIZE]
    block[148:156] = b" " * 8
    buf[148:156] = b"%07o\0" % sum(block)
    return bytes(buf)


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected(case: str) -> None:
    mutate, code, offset, fragment = REJECTED[case]
    err = read_error(mutate(ARCHIVE))
    assert err.code == code, err.message
    assert err.offset == offset, err.message
    assert fragment in err.message


def test_rejection_catalogue_is_consistent() -> None:
    # Each mutation really changed the archive; otherwise a case could pass vacuously.
    for case, (mutate, *_rest) in REJECTED.items():
        assert mutate(ARCHIVE) != ARCHIVE, case


def test_single_zero_block_then_header_is_trailing_data() -> None:
    data = bytes(BLOCK_SIZE) + ARCHIVE[: -BLOCK_SIZE]
    assert read_error(data).code == "trailing-data"


def test_empty_input_is_truncated() -> None:
    assert read_error(b"").code == "truncated"


# --- fuzzing -----------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_format_errors(data: bytes) -> None:
    try:
        read_all(data)
    except FormatError:
        pass


@FUZZ
@given(st.binary(max_size=3 * RECORD_SIZE))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    only_format_errors(data)


@FUZZ
@given(st.binary(min_size=BLOCK_SIZE, max_size=BLOCK_SIZE))
def test_fuzz_arbitrary_header_with_valid_checksum(block: bytes) -> None:
    # Random blocks almost never pass the checksum; fixing it reaches the deeper checks.
    data = fix_checksum(block + ARCHIVE[BLOCK_SIZE:], 0)
    only_format_errors(data)


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(ARCHIVE) - 1), st.integers(0, 255)), max_size=8),
    st.sampled_from(["none", "fix-checksums"]),
    st.integers(0, len(ARCHIVE)),
)
def test_fuzz_mutated_archive(edits: list[tuple[int, int]], mode: str, cut: int) -> None:
    buf = bytearray(ARCHIVE)
    for offset, value in edits:
        buf[offset] = value
    data = bytes(buf)
    if mode == "fix-checksums":
        data = fix_checksum(fix_checksum(data, 0), SECOND)
    only_format_errors(data)
    only_format_errors(data[:cut])
