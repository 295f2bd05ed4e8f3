"""Bundle v1 containers: written canonically, read in one pass, any tampering rejected."""

from __future__ import annotations

import hashlib
import io
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mkimage.bundle.canon import JsonObject, canonical_json
from mkimage.bundle.container import (
    MAX_MANIFEST_BYTES,
    BundleContents,
    iter_component,
    read_bundle,
    write_bundle,
)
from mkimage.bundle.manifest import (
    AbiProfile,
    Arch,
    Component,
    Input,
    InputKind,
    Manifest,
    Provenance,
    Role,
    Signature,
    SignatureScheme,
)
from mkimage.bundle.tarball import BLOCK_SIZE, RECORD_SIZE, write_archive
from mkimage.errors import FormatError
from tests.conftest import needs_tool

EPOCH = 1700000000


def pseudo_random(seed: str, size: int) -> bytes:
    """Fixed bytes that look random, so bundle contents are pinned across runs."""
    out = b""
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return out[:size]


FILES: dict[str, tuple[Role, str, bytes]] = {
    "boot/bzImage": (Role.KERNEL, "application/x-linux-bzimage", pseudo_random("kernel", 1500)),
    "boot/cmdline": (Role.CMDLINE, "text/plain", b"console=ttyS0 quiet\n"),
    "boot/initrd.cpio": (Role.INITRD, "application/x-cpio", pseudo_random("initrd", 700)),
    "dtb/board.dtb": (Role.DTB, "application/x-dtb", b""),
}
KEYIDS = ["c" * 64, "a" * 64]  # deliberately unsorted: the writer orders the members


def make_manifest(
    files: dict[str, tuple[Role, str, bytes]] = FILES, epoch: int = EPOCH
) -> Manifest:
    return Manifest.build(
        recipe_name="min-x86",
        recipe_version="1.0.0",
        arch=Arch.X86_64,
        abi_profile=AbiProfile.MK2,
        kernel_release="6.12.3-mk",
        components=[
            Component(role=role, path=path, size=len(data),
                      sha256=hashlib.sha256(data).hexdigest(), media_type=media_type)
            for path, (role, media_type, data) in files.items()
        ],
        provenance=Provenance(
            source_date_epoch=epoch,
            mkspawn_version="0.1.0",
            tools={"gcc": "13.2.0"},
            inputs=(Input(kind=InputKind.SOURCE, name="linux-6.12.3.tar.xz",
                          sha256=hashlib.sha256(b"src").hexdigest()),),
            config_sha256="",
        ),
    )


def signature(keyid: str) -> bytes:
    return Signature(keyid=keyid, scheme=SignatureScheme.ED25519, sig=keyid[:2] * 64).to_bytes()


def stage_files(directory: Path, files: dict[str, tuple[Role, str, bytes]] = FILES) -> list[
        tuple[str, Path]]:
    pairs = []
    for path, (_role, _media, data) in files.items():
        target = directory / "in" / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        pairs.append((path, target))
    return pairs


def build_bundle(directory: Path, keyids: list[str] = KEYIDS) -> bytes:
    out = io.BytesIO()
    write_bundle(out, make_manifest().to_bytes(), [signature(k) for k in keyids],
                 stage_files(directory), EPOCH)
    return out.getvalue()


def read(data: bytes) -> BundleContents:
    return read_bundle(io.BytesIO(data))


def read_error(data: bytes) -> FormatError:
    with pytest.raises(FormatError) as info:
        read(data)
    return info.value


def raw_bundle(members: list[tuple[str, bytes]], mtime: int = EPOCH) -> bytes:
    """An archive with exactly these members, bypassing write_bundle's consistency checks."""
    out = io.BytesIO()
    write_archive(out, [(name, len(data), [data]) for name, data in members], mtime)
    return out.getvalue()


def standard_members() -> list[tuple[str, bytes]]:
    members = [("manifest.json", make_manifest().to_bytes())]
    members += [(f"signatures/{k}.sig", signature(k)) for k in sorted(KEYIDS)]
    members += [(path, data) for path, (_r, _m, data) in sorted(FILES.items())]
    return members


# --- round trip --------------------------------------------------------------------------


def test_round_trip(tmp_path: Path) -> None:
    data = build_bundle(tmp_path)
    assert len(data) % RECORD_SIZE == 0
    contents = read(data)
    assert contents.manifest == make_manifest()
    assert contents.manifest_bytes == make_manifest().to_bytes()
    assert [sig.keyid for _raw, sig in contents.signatures] == sorted(KEYIDS)
    assert [raw for raw, _sig in contents.signatures] == [signature(k) for k in sorted(KEYIDS)]
    assert list(contents.component_offsets) == sorted(FILES)
    for path, (offset, size) in contents.component_offsets.items():
        assert data[offset : offset + size] == FILES[path][2]
    f = io.BytesIO(data)
    assert b"".join(iter_component(f, contents, "boot/bzImage")) == FILES["boot/bzImage"][2]


def test_raw_manifest_bytes_are_kept(tmp_path: Path) -> None:
    contents = read(build_bundle(tmp_path))
    assert contents.manifest_bytes is not contents.manifest.to_bytes()
    assert contents.manifest_bytes == contents.manifest.to_bytes()


def test_unsigned_bundle_reads(tmp_path: Path) -> None:
    assert read(build_bundle(tmp_path, keyids=[])).signatures == ()


def test_bundle_is_reproducible(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    assert build_bundle(tmp_path / "one") == build_bundle(tmp_path / "two")


def test_bundle_matches_hand_built_archive(tmp_path: Path) -> None:
    """The member order is exactly: manifest, sorted signatures, sorted components."""
    assert build_bundle(tmp_path) == raw_bundle(standard_members())


def test_gnu_tar_lists_extracts_and_recreates(tmp_path: Path) -> None:
    needs_tool("tar")
    bundle = tmp_path / "b.mkb"
    bundle.write_bytes(build_bundle(tmp_path))
    listing = subprocess.run(
        ["tar", "-tvf", str(bundle)], check=True, capture_output=True, text=True,
        env={"TZ": "UTC", "LC_ALL": "C"},
    ).stdout.splitlines()
    names = [name for name, _data in standard_members()]
    assert [line.split()[-1] for line in listing] == names
    assert all(line.startswith("-rw-r--r-- root/root ") for line in listing)
    out = tmp_path / "x"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(bundle), "-C", str(out)], check=True)
    for name, data in standard_members():
        assert (out / name).read_bytes() == data
    # GNU tar re-creating from the extracted tree, in bundle order, gives identical bytes.
    subprocess.run(
        ["tar", "--format=ustar", "--owner=root:0", "--group=root:0", "--mode=0644",
         f"--mtime=@{EPOCH}", "--no-recursion", "-cf", str(tmp_path / "gnu.tar"), *names],
        check=True, cwd=out,
    )
    assert (tmp_path / "gnu.tar").read_bytes() == bundle.read_bytes()


def test_rewrite_from_another_bundle_with_streamed_sources(tmp_path: Path) -> None:
    """Re-signing streams components out of the old bundle instead of from files."""
    data = build_bundle(tmp_path, keyids=["c" * 64])
    source = io.BytesIO(data)
    contents = read_bundle(source)
    sources = [
        (path, lambda path=path: iter_component(source, contents, path, chunk_size=100))
        for path in contents.component_offsets
    ]
    out = io.BytesIO()
    write_bundle(out, contents.manifest_bytes, [signature(k) for k in KEYIDS], sources, EPOCH)
    assert out.getvalue() == build_bundle(tmp_path)


# --- writer refuses inconsistent input ---------------------------------------------------


def test_write_rejects(tmp_path: Path) -> None:
    pairs = stage_files(tmp_path)
    manifest = make_manifest().to_bytes()
    sigs = [signature(k) for k in KEYIDS]

    def attempt(manifest_bytes: bytes = manifest, signatures: list[bytes] = sigs,
                components: list[tuple[str, Path]] = pairs, mtime: int = EPOCH) -> str:
        with pytest.raises(ValueError) as info:
            write_bundle(io.BytesIO(), manifest_bytes, signatures, components, mtime)
        return str(info.value)

    assert "missing ['boot/cmdline']" in attempt(components=pairs[:1] + pairs[2:])
    assert "extra ['x']" in attempt(components=[*pairs, ("x", pairs[0][1])])
    assert "twice" in attempt(components=[*pairs, pairs[0]])
    assert "source_date_epoch" in attempt(mtime=EPOCH + 1)
    assert "not a valid manifest" in attempt(manifest_bytes=manifest + b" ")
    assert "not a valid signature" in attempt(signatures=[b"{}"])
    assert "two signatures" in attempt(signatures=[sigs[0], sigs[0]])
    (tmp_path / "in/boot/cmdline").write_bytes(b"console=ttyS1 quiet\n")  # same size
    assert "sha256" in attempt()
    (tmp_path / "in/boot/cmdline").write_bytes(b"console=ttyS0\n")  # shorter
    assert "sha256" in attempt()
    (tmp_path / "in/boot/cmdline").write_bytes(b"console=ttyS0 quiet and longer\n")
    assert "more than the declared" in attempt()


# --- reader rejection catalogue ----------------------------------------------------------

Members = list[tuple[str, bytes]]


def replace(name: str, data: bytes) -> Callable[[Members], Members]:
    return lambda members: [(n, data if n == name else d) for n, d in members]


def drop(name: str) -> Callable[[Members], Members]:
    return lambda members: [(n, d) for n, d in members if n != name]


def rename(old: str, new: str) -> Callable[[Members], Members]:
    return lambda members: [(new if n == old else n, d) for n, d in members]


def swap(i: int, j: int) -> Callable[[Members], Members]:
    def edit(members: Members) -> Members:
        members = list(members)
        members[i], members[j] = members[j], members[i]
        return members

    return edit


def manifest_dict_edit(edit: Callable[[JsonObject], None]) -> Callable[[Members], Members]:
    data = make_manifest().to_dict()
    edit(data)
    return replace("manifest.json", canonical_json(data))


SIG_A = f"signatures/{'a' * 64}.sig"
SIG_C = f"signatures/{'c' * 64}.sig"

# case: (members edit, code, message fragment)
REJECTED: dict[str, tuple[Callable[[Members], Members], str, str]] = {
    "empty": (lambda m: [], "manifest-not-first", "empty"),
    "component-first": (swap(0, 3), "manifest-not-first", "first member is 'boot/bzImage'"),
    "signature-first": (swap(0, 1), "manifest-not-first", "signatures/"),
    "no-manifest": (drop("manifest.json"), "manifest-not-first", "first member"),
    "manifest-too-large": (replace("manifest.json", b" " * (MAX_MANIFEST_BYTES + 1)),
                           "manifest-too-large", "limit"),
    "manifest-pretty": (replace("manifest.json", make_manifest().to_bytes().replace(b",", b", ")),
                        "non-canonical-json", "manifest.json"),
    "manifest-bad-field": (manifest_dict_edit(lambda d: d.update(arch="sparc")), "bad-field",
                           "manifest.json: arch"),
    "manifest-future": (manifest_dict_edit(lambda d: d.update(format_version=2)),
                        "unknown-format-version", "format_version"),
    "signature-renamed": (rename(SIG_C, f"signatures/{'b' * 64}.sig"), "bad-signature-member",
                          "expected 'signatures/ccc"),
    "signature-garbage": (replace(SIG_A, b"not json"), "bad-json", SIG_A),
    "signature-bad-field": (replace(SIG_A, canonical_json({"_type": "mkspawn-signature"})),
                            "missing-field", SIG_A),
    "signature-too-large": (replace(SIG_A, b" " * (64 << 10 + 1)), "bad-signature-member",
                            "limit"),
    "signatures-unsorted": (swap(1, 2), "bad-member-order", SIG_A),
    "signature-after-component": (lambda m: [m[0], m[1], m[3], m[2], *m[4:]],
                                  "bad-member-order", SIG_C),
    "extra-component": (lambda m: [*m, ("zz/extra", b"x")], "extra-member", "zz/extra"),
    "extra-before": (lambda m: [*m[:3], ("a/extra", b"x"), *m[3:]], "extra-member", "a/extra"),
    "missing-middle": (drop("boot/cmdline"), "missing-member", "'boot/cmdline'"),
    "missing-last": (drop("dtb/board.dtb"), "missing-member", "'dtb/board.dtb'"),
    "components-swapped": (swap(3, 4), "missing-member", "'boot/bzImage'"),
    "size-mismatch": (replace("boot/cmdline", b"console=ttyS0\n"), "size-mismatch",
                      "observed 14, expected 20"),
    "digest-mismatch": (replace("boot/cmdline", b"console=ttyS1 quiet\n"), "digest-mismatch",
                        "boot/cmdline"),
    "empty-component-filled": (replace("dtb/board.dtb", b"\xd0\x0d\xfe\xed"), "size-mismatch",
                               "observed 4, expected 0"),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected(case: str) -> None:
    edit, code, fragment = REJECTED[case]
    err = read_error(raw_bundle(edit(standard_members())))
    assert err.code == code, err.message
    assert fragment in err.message, err.message
    assert err.offset is not None or code == "missing-member"


def test_catalogue_baseline_is_valid() -> None:
    read(raw_bundle(standard_members()))


def test_manifest_field_error_points_at_manifest_data() -> None:
    edit, _code, _fragment = REJECTED["manifest-bad-field"]
    assert read_error(raw_bundle(edit(standard_members()))).offset == BLOCK_SIZE


def test_mtime_must_equal_source_date_epoch() -> None:
    err = read_error(raw_bundle(standard_members(), mtime=EPOCH + 1))
    assert err.code == "non-canonical-header"
    assert f"observed {EPOCH + 1}, expected" in err.message


def test_tar_level_errors_pass_through(tmp_path: Path) -> None:
    data = build_bundle(tmp_path)
    assert read_error(data + b"x").code == "trailing-data"
    assert read_error(data[:-BLOCK_SIZE]).code == "truncated"


# --- every byte matters ------------------------------------------------------------------


def signature_data_ranges(data: bytes) -> list[range]:
    contents = read(data)
    f = io.BytesIO(data)
    ranges = []
    from mkimage.bundle.tarball import read_members

    for header in read_members(f):
        if header.name.startswith("signatures/"):
            ranges.append(range(header.data_offset, header.data_offset + header.size))
    assert len(ranges) == len(contents.signatures)
    return ranges


def test_every_byte_flip_is_caught(tmp_path: Path) -> None:
    """Flip every byte two ways; the bundle must be rejected, or else the change must be
    in bytes the signatures cover (the manifest) or in a signature itself, so that
    verification rejects it later.  No flip may leave the signed content intact."""
    data = build_bundle(tmp_path)
    original = read(data)
    sig_ranges = signature_data_ranges(data)
    manifest_range = range(BLOCK_SIZE, BLOCK_SIZE + len(original.manifest_bytes))
    rejected = 0
    left_to_crypto: dict[str, int] = {"manifest": 0, "signature": 0}
    for position in range(len(data)):
        for value in {data[position] ^ 0x01, 0x00} - {data[position]}:
            mutated = bytearray(data)
            mutated[position] = value
            try:
                contents = read(bytes(mutated))
            except FormatError:
                rejected += 1
                continue
            if position in manifest_range:
                assert contents.manifest_bytes != original.manifest_bytes, position
                left_to_crypto["manifest"] += 1
            else:
                assert any(position in r for r in sig_ranges), position
                assert contents.manifest_bytes == original.manifest_bytes
                assert contents.signatures != original.signatures, position
                left_to_crypto["signature"] += 1
    total = rejected + sum(left_to_crypto.values())
    print(f"\nbyte flips on a {len(data)}-byte bundle: {total} mutations, {rejected} rejected "
          f"by the reader, left to signature verification: {left_to_crypto}")
    assert rejected > 0.9 * total


# --- fuzzing -----------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
VALID = raw_bundle(standard_members())


@FUZZ
@given(st.binary(max_size=2 * RECORD_SIZE))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    try:
        read(data)
    except FormatError:
        pass


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1,
             max_size=6),
    st.integers(0, len(VALID)),
    st.binary(max_size=64),
)
def test_fuzz_mutated_bundle(edits: list[tuple[int, int]], cut: int, insert: bytes) -> None:
    buf = bytearray(VALID)
    for offset, value in edits:
        buf[offset] = value
    for candidate in (bytes(buf), bytes(buf[:cut]), bytes(buf[:cut]) + insert + bytes(buf[cut:])):
        try:
            read(candidate)
        except FormatError:
            pass


@FUZZ
@given(st.lists(st.sampled_from(standard_members()), max_size=8, unique_by=lambda m: m[0]),
       st.integers(0, 2**33 - 1))
def test_fuzz_member_sequences(members: list[tuple[str, bytes]], mtime: int) -> None:
    try:
        contents = read(raw_bundle(members, mtime=mtime))
    except FormatError:
        return
    assert members == standard_members() and mtime == EPOCH
    assert contents.manifest == make_manifest()
