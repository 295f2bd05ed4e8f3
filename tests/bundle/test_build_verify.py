"""End to end through the CLI: build → verify/inspect/sign, determinism, tamper and trust errors."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from mkimage.bundle.sign import make_signature
from mkimage.bundle.verify import verify_bundle
from mkimage.errors import ExitCode, MkspawnError, VerifyError
from mkimage.handover.binding import decode_handover
from mkimage.kernel.elfnote import MK_NOTE_TYPE
from mkimage.signing.keys import PassphraseSource, load_private_key
from mkimage.signing.trust import load_trust_store
from tests.bundle.forge import write_signed
from tests.conftest import BzImageFactory, prebuilt_recipe
from tests.conftest import run_mkspawn as mkspawn

KEYS = Path(__file__).resolve().parents[1] / "data" / "keys"
EPOCH = 1_700_000_000



def one_error_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def trust(tmp_path: Path) -> Path:
    d = tmp_path / "trust"
    d.mkdir()
    shutil.copy(KEYS / "test-ed25519.pub.pem", d)
    return d


def write_recipe(directory: Path, kernel: Path, *, version: str = "1.0.0", extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(kernel, directory / "bzImage")
    return prebuilt_recipe(directory, "bzImage", version=version, epoch=EPOCH, extra=extra)


@pytest.fixture
def built(tmp_path: Path, synthetic_kernel: Path) -> Path:
    recipe = write_recipe(tmp_path / "a", synthetic_kernel)
    out = tmp_path / "demo.mkb"
    done = mkspawn("build", recipe, "-o", out, "--key", KEYS / "test-ed25519.pem")
    assert done.returncode == 0, done.stderr
    return out


def test_round_trip_build_verify_inspect(built: Path, trust: Path) -> None:
    done = mkspawn("verify", built, "--trust", trust, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True
    assert [s["status"] for s in report["signatures"]] == ["trusted"]
    roles = {c["role"]: c for c in report["components"]}
    assert set(roles) == {"kernel", "initrd", "cmdline", "sbom"}
    assert roles["initrd"]["media_type"] == "application/x-cpio"
    assert report["cmdline"] == "console=ttyS0 panic=-1"
    assert report["provenance"]["source_date_epoch"] == EPOCH
    text = mkspawn("inspect", built, "--trust", trust)
    assert text.returncode == 0 and "console=ttyS0 panic=-1" in text.stdout and "trusted" in text.stdout


def test_gnu_tar_lists_the_bundle(built: Path) -> None:
    listing = subprocess.run(["tar", "-tvf", str(built)], capture_output=True, text=True, check=True).stdout
    names = [line.split()[-1] for line in listing.splitlines()]
    assert names[0] == "manifest.json"
    assert names[1].startswith("signatures/") and names[1].endswith(".sig")
    assert names[2] == "provenance.dsse.json"
    assert names[3:] == ["bzImage", "cmdline", "initrd", "sbom.cdx.json"]
    assert all(line.startswith("-rw-r--r-- root/root") for line in listing.splitlines())


def test_same_inputs_same_bytes_and_changed_input_differs(tmp_path: Path, synthetic_kernel: Path) -> None:
    outs = []
    for sub in ("one", "two/deeper"):
        recipe = write_recipe(tmp_path / sub, synthetic_kernel)
        out = tmp_path / sub / "b.mkb"
        assert mkspawn("build", recipe, "-o", out, "--key", KEYS / "test-ed25519.pem").returncode == 0
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
    changed = write_recipe(tmp_path / "three", synthetic_kernel)
    (tmp_path / "three" / "initrd.cpio").write_bytes(b"070701" + b"1" * 104)
    out = tmp_path / "three" / "b.mkb"
    assert mkspawn("build", changed, "-o", out, "--key", KEYS / "test-ed25519.pem").returncode == 0
    assert out.read_bytes() != outs[0]


def test_source_date_epoch_from_env_reaches_the_bundle(tmp_path: Path, synthetic_kernel: Path) -> None:
    recipe = write_recipe(tmp_path, synthetic_kernel)
    recipe.write_text(recipe.read_text().replace(f"source_date_epoch = {EPOCH}\n", ""))
    a, b = tmp_path / "a.mkb", tmp_path / "b.mkb"
    assert mkspawn("build", recipe, "-o", a, env={"SOURCE_DATE_EPOCH": "12345"}).returncode == 0
    assert mkspawn("build", recipe, "-o", b, env={"SOURCE_DATE_EPOCH": "12346"}).returncode == 0
    assert a.read_bytes() != b.read_bytes()
    report = json.loads(mkspawn("inspect", a, "--json").stdout)
    assert report["provenance"]["source_date_epoch"] == 12345


def small_bundle(tmp_path: Path) -> Path:
    """A few KiB of components (the smallest bzImage that passes, cmdline, initrd), signed."""
    return write_signed(tmp_path / "small.mkb")


def test_every_single_byte_flip_is_rejected(tmp_path: Path, trust: Path) -> None:
    bundle = small_bundle(tmp_path)
    store = load_trust_store(trust, must_exist=True)
    verify_bundle(bundle, store)  # the pristine bundle is accepted
    data = bundle.read_bytes()
    flipped = tmp_path / "flipped.mkb"
    accepted = []
    for i in range(len(data)):
        variant = bytearray(data)
        variant[i] ^= 0x01
        flipped.write_bytes(variant)
        try:
            verify_bundle(flipped, store)
            accepted.append(i)
        except VerifyError:
            pass
    print(f"byte-flip: {len(data)} variants, {len(data) - len(accepted)} rejected")
    assert accepted == []


def test_distinct_errors(tmp_path: Path, built: Path, trust: Path) -> None:
    other = tmp_path / "other-trust"
    other.mkdir()
    shutil.copy(KEYS / "other-ed25519.pub.pem", other)
    assert "untrusted-key" in one_error_line(mkspawn("verify", built, "--trust", other), ExitCode.VERIFY_REJECTED)

    data = built.read_bytes()
    cases = {
        "truncated": data[: len(data) - 700],
        "trailing-data": data + b"garbage",
    }
    for code, variant in cases.items():
        path = tmp_path / f"{code}.mkb"
        path.write_bytes(variant)
        line = one_error_line(mkspawn("verify", path, "--trust", trust), ExitCode.VERIFY_REJECTED)
        assert line.endswith(f"[{code}]"), line
        assert str(path) in line

    unsigned = tmp_path / "unsigned.mkb"
    recipe = write_recipe(tmp_path / "u", Path(built.parent / "a" / "bzImage"))
    assert mkspawn("build", recipe, "-o", unsigned).returncode == 0
    assert one_error_line(mkspawn("verify", unsigned, "--trust", trust), 3).endswith("[unsigned]")

    missing_trust = one_error_line(mkspawn("verify", built, "--trust", tmp_path / "nope"), ExitCode.USAGE)
    assert "trust store directory does not exist" in missing_trust


def test_wrong_key_signature_is_rejected(tmp_path: Path, built: Path, trust: Path) -> None:
    """A signature member that claims the trusted key id but was made by another key."""
    from mkimage.bundle.container import read_bundle
    from mkimage.bundle.manifest import Signature

    with built.open("rb") as f:
        contents = read_bundle(f)
    other = load_private_key(KEYS / "other-ed25519.pem", PassphraseSource(), {})
    forged = Signature.from_bytes(make_signature(other, contents.manifest_bytes))
    trusted_id = contents.signatures[0][1].keyid
    data = built.read_bytes()
    old = contents.signatures[0][1].sig
    assert data.count(old.encode()) == 1
    tampered = tmp_path / "forged.mkb"
    tampered.write_bytes(data.replace(old.encode(), forged.sig.encode()))
    line = one_error_line(mkspawn("verify", tampered, "--trust", trust), 3)
    assert line.endswith("[bad-signature]") and trusted_id[:16] in line


def test_sign_adds_a_second_signature_keeping_the_rest(tmp_path: Path, built: Path, trust: Path) -> None:
    from mkimage.bundle.container import read_bundle

    with built.open("rb") as f:
        before = read_bundle(f)
    data_before = built.read_bytes()
    assert mkspawn("sign", built, "--key", KEYS / "other-ed25519.pem").returncode == 0
    with built.open("rb") as f:
        after = read_bundle(f)
    data_after = built.read_bytes()
    report = json.loads(mkspawn("inspect", built, "--trust", trust, "--json").stdout)
    assert sorted(s["status"] for s in report["signatures"]) == ["trusted", "untrusted"]
    assert after.manifest_bytes == before.manifest_bytes
    assert before.signatures[0] in after.signatures and len(after.signatures) == 2
    for path, (offset, size) in before.component_offsets.items():
        new_offset, new_size = after.component_offsets[path]
        assert data_after[new_offset:new_offset + new_size] == data_before[offset:offset + size]
    assert mkspawn("verify", built, "--trust", trust).returncode == 0


def test_rollback_state(tmp_path: Path, synthetic_kernel: Path, trust: Path) -> None:
    state = tmp_path / "state.json"
    bundles = {}
    for version in ("1.2.0", "1.10.0", "1.9.9"):
        recipe = write_recipe(tmp_path / version, synthetic_kernel, version=version)
        bundles[version] = tmp_path / f"{version}.mkb"
        assert mkspawn("build", recipe, "-o", bundles[version], "--key", KEYS / "test-ed25519.pem").returncode == 0
    assert mkspawn("verify", bundles["1.2.0"], "--trust", trust, "--state", state).returncode == 0
    assert mkspawn("verify", bundles["1.10.0"], "--trust", trust, "--state", state).returncode == 0
    line = one_error_line(mkspawn("verify", bundles["1.9.9"], "--trust", trust, "--state", state),
                          ExitCode.ROLLBACK)
    assert "older than the verified 1.10.0" in line and line.endswith("[rollback]")
    assert json.loads(state.read_text())["recipes"] == {"demo": "1.10.0"}
    # re-verifying the current version is fine
    assert mkspawn("verify", bundles["1.10.0"], "--trust", trust, "--state", state).returncode == 0


def test_failed_build_leaves_no_output(tmp_path: Path, synthetic_kernel: Path) -> None:
    recipe = write_recipe(tmp_path, synthetic_kernel)
    (tmp_path / "not-a-kernel").write_bytes(b"\x7fELF" + b"\0" * 2000)
    out = tmp_path / "out.mkb"
    line = one_error_line(mkspawn("build", recipe, "-o", out, "--set", "kernel.image=not-a-kernel", cwd=tmp_path),
                          ExitCode.STAGE_FAILED)
    assert "contract" in line
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.mkb")] == []


@pytest.mark.parametrize(
    ("cut", "rule"),
    [(lambda d: d[:-512], "not-truncated"), (lambda d: d[: 0x800 + 0x40 + 10], "not-truncated")],
    ids=["last-sector", "inside-payload"],
)
def test_truncated_prebuilt_kernel_is_not_signed(tmp_path: Path, synthetic_kernel: Path,
                                                 cut: Callable[[bytes], bytes], rule: str) -> None:
    """The same static contract as `check --static` runs on the kernel before signing."""
    recipe = write_recipe(tmp_path, synthetic_kernel)
    kernel = tmp_path / "bzImage"
    kernel.write_bytes(cut(kernel.read_bytes()))
    static = mkspawn("check", "--static", kernel)
    assert static.returncode != 0 and rule in static.stdout
    out = tmp_path / "out.mkb"
    line = one_error_line(mkspawn("build", recipe, "-o", out, "--key", KEYS / "test-ed25519.pem"),
                          ExitCode.STAGE_FAILED)
    assert line.startswith("mkspawn: error: bzImage: fails the none loader contract: ")
    assert f": {rule}: " in line and line.endswith("[contract-failed]")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.mkb")] == []


def test_corrupt_payload_in_a_prebuilt_kernel_is_not_signed(tmp_path: Path, synthetic_kernel: Path) -> None:
    recipe = write_recipe(tmp_path, synthetic_kernel)
    kernel = tmp_path / "bzImage"
    data = bytearray(kernel.read_bytes())
    data[0x800 + 0x40 + 12] ^= 0xFF  # inside the gzip stream (setup is 0x800 bytes, payload at +0x40)
    kernel.write_bytes(bytes(data))
    line = one_error_line(mkspawn("build", recipe, "-o", tmp_path / "out.mkb"), ExitCode.STAGE_FAILED)
    assert ": payload: " in line and line.endswith("[contract-failed]")


def mk_bzimage(make_bzimage: BzImageFactory, make_elf: Callable[..., bytes]) -> bytes:
    """A bzImage whose payload is an x86_64 ELF carrying the multikernel note."""
    vmlinux = make_elf([(b"Linux", MK_NOTE_TYPE, (0x1000).to_bytes(8, "little"))])
    return make_bzimage(gzip.compress(vmlinux, mtime=0))


def test_encrypted_key_needs_its_passphrase(tmp_path: Path, synthetic_kernel: Path, trust: Path) -> None:
    pass_file = tmp_path / "pass"
    pass_file.write_text("correct horse\n")
    key = tmp_path / "k.pem"
    assert mkspawn("keygen", "-o", key, "--algorithm", "ecdsa-p256", "--passphrase-file", pass_file).returncode == 0
    assert (key.stat().st_mode & 0o777) == 0o600
    assert b"ENCRYPTED" in key.read_bytes()
    recipe = write_recipe(tmp_path / "r", synthetic_kernel)
    out = tmp_path / "o.mkb"
    line = one_error_line(mkspawn("build", recipe, "-o", out, "--key", key), ExitCode.USAGE)
    assert "encrypted" in line and "correct horse" not in line
    done = mkspawn("build", recipe, "-o", out, "--key", key, env={"MKSPAWN_KEY_PASSPHRASE": "correct horse"})
    assert done.returncode == 0, done.stderr
    shutil.copy(tmp_path / "k.pub.pem", trust)
    assert mkspawn("verify", out, "--trust", trust).returncode == 0


@pytest.mark.parametrize("algorithm", ["ed25519", "ecdsa-p256", "ecdsa-p384", "rsa3072"])
def test_every_key_algorithm_signs_and_verifies(tmp_path: Path, built: Path, algorithm: str) -> None:
    key = tmp_path / f"{algorithm}.pem"
    assert mkspawn("keygen", "-o", key, "--algorithm", algorithm).returncode == 0
    assert mkspawn("sign", built, "--key", key).returncode == 0
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(tmp_path / f"{algorithm}.pub.pem", store)
    report = verify_bundle(built, load_trust_store(store, must_exist=True))
    assert len(report.trusted_by) == 1


def test_library_errors_are_project_errors(tmp_path: Path) -> None:
    with pytest.raises(MkspawnError):
        verify_bundle(tmp_path / "missing.mkb", load_trust_store(tmp_path, must_exist=True))


def test_initramfs_is_built_when_no_prebuilt_image(tmp_path: Path, synthetic_kernel: Path) -> None:
    recipe = write_recipe(tmp_path, synthetic_kernel)
    recipe.write_text(recipe.read_text().replace('image = "initrd.cpio"', 'command = "echo spawned"'))
    out = tmp_path / "b.mkb"
    done = mkspawn("build", recipe, "-o", out)
    assert done.returncode == 0, done.stderr
    report = json.loads(mkspawn("inspect", out, "--json").stdout)
    initrd = next(c for c in report["components"] if c["role"] == "initrd")
    assert initrd["media_type"] == "application/x-cpio+gzip"  # no kernel config known: the safe default
    assert any(i["name"] == "/bin/busybox" for i in report["provenance"]["inputs"])
    subprocess.run(["tar", "-xf", str(out), "-C", str(tmp_path), "initrd"], check=True)
    listing = mkspawn("initramfs", "--list", tmp_path / "initrd", "--json")
    assert listing.returncode == 0, listing.stderr
    names = {m["name"] for seg in json.loads(listing.stdout)["segments"] for m in seg["members"]}
    assert {"init", "bin/busybox", "dev/console", "etc/mkspawn/command"} <= names


def test_hardware_parts_reach_the_bundle(tmp_path: Path, debian_kernel: Path, make_bzimage: BzImageFactory,
                                        make_elf: Callable[..., bytes]) -> None:
    """mk-master spawn with CPUs, memory, a device and an ACPI table: trees, tables, handover."""
    config = debian_kernel.parent / debian_kernel.name.replace("vmlinuz-", "config-")
    # A stock kernel has no multikernel note, which mk-master's loader needs.
    (tmp_path / "bzImage").write_bytes(mk_bzimage(make_bzimage, make_elf))
    stock = mkspawn("check", "--static", debian_kernel, "--profile", "mk-master")
    assert stock.returncode != 0 and "FAIL  mk-note" in stock.stdout
    (tmp_path / "t.asl").write_text(
        'DefinitionBlock ("", "SSDT", 2, "MKSPWN", "BUNDLE01", 1)\n{\n    Name (MKSP, 1)\n}\n')
    recipe = tmp_path / "hw.toml"
    recipe.write_text(f"""
[metadata]
name = "hw"
version = "1.0"
source_date_epoch = {EPOCH}
[kernel]
image = "bzImage"
config = "{config}"
cmdline = "console=ttyS0"
[initramfs]
command = "true"
[instance]
name = "app0"
id = 3
profile = "mk-master"
cpus = [2, 3]
memory_bytes = 0x10000000
cmdline = "console=mktty0"
[acpi]
tables = ["t.asl"]
""")
    out = tmp_path / "hw.mkb"
    done = mkspawn("build", recipe, "-o", out)
    assert done.returncode == 0, done.stderr
    report = json.loads(mkspawn("inspect", out, "--json").stdout)
    paths = {c["path"]: c["role"] for c in report["components"]}
    assert paths["acpi/t.aml"] == "acpi" and paths["handover.dtb"] == "handover"
    assert paths["devicetree/instance.dtbo"] == "dtbo" and paths["devicetree/baseline.dtb"] == "dtb"
    assert report["cmdline"] == "console=ttyS0 console=mktty0"
    assert report["abi_profile"] == "mk-master"
    assert report["instance"]["name"] == "app0" and report["instance"]["cpus"] == [2, 3]
    assert "instance:       app0 (id 3)" in mkspawn("inspect", out).stdout
    subprocess.run(["tar", "-xf", str(out), "-C", str(tmp_path), "initrd", "handover.dtb"], check=True)
    listing = json.loads(mkspawn("initramfs", "--list", tmp_path / "initrd", "--json").stdout)
    early = listing["segments"][0]
    assert early["compression"] == "none"
    assert [m["name"] for m in early["members"] if m["name"].endswith(".aml")] == ["kernel/firmware/acpi/t.aml"]
    digests = {c["role"]: c["sha256"] for c in report["components"] if c["role"] in ("kernel", "initrd", "dtbo")}
    handover = decode_handover((tmp_path / "handover.dtb").read_bytes())
    assert {k: handover.digests[k] for k in digests} == digests
    assert handover.instance is not None and handover.instance.cpus == (2, 3)
    dts = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(tmp_path / "handover.dtb")],
                         capture_output=True, text=True, check=True).stdout
    assert 'compatible = "mkspawn,handover-v2"' in dts


def test_recipe_names_its_signing_key_and_passphrase_file(tmp_path: Path, synthetic_kernel: Path,
                                                          trust: Path) -> None:
    (tmp_path / "pass").write_text("s3cret\n")
    assert mkspawn("keygen", "-o", tmp_path / "release.pem", "--passphrase-file", tmp_path / "pass").returncode == 0
    shutil.copy(tmp_path / "release.pub.pem", trust)
    recipe = write_recipe(tmp_path, synthetic_kernel, extra='[bundle]\nkey = "release.pem"\npassphrase_file = "pass"\n')
    out = tmp_path / "b.mkb"
    done = mkspawn("build", recipe, "-o", out, cwd=Path("/"))
    assert done.returncode == 0, done.stderr
    assert mkspawn("verify", out, "--trust", trust).returncode == 0
    assert b"s3cret" not in out.read_bytes() and b"PRIVATE KEY" not in out.read_bytes()
