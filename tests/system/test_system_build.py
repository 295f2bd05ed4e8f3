"""`mkspawn build SYSTEM -o DIR`, `verify DIR` and `inspect DIR` on real bundles.

The spawns use the synthetic bzImage (it passes the v2 loader contract, as a stock
kernel does) and a prebuilt initrd, so nothing is compiled; the one test that uses the
example system's compiled kernel is marked slow.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from mkimage.bundle.system_manifest import SystemManifest
from mkimage.errors import MkspawnError
from mkimage.recipe.system import load_system
from mkimage.signing.trust import load_trust_store
from mkimage.system import build_system, verify_system
from tests.conftest import run_mkspawn as mkspawn

REPO = Path(__file__).resolve().parents[2]
KEYS = REPO / "tests" / "data" / "keys"
KEY = KEYS / "test-ed25519.pem"
EPOCH = 1_700_000_000

SYSTEM = """
[system]
name = "edge"
version = "2.1.0"
profile = "v2"

[pool]
cpus = [2, 3, 4, 5, 6, 7]
smt_threads = 2
memory = [{ size_bytes = 0x40000000 }]

[[spawns]]
recipe = "spawn.toml"
name = "net"
id = 1
cpus = [2, 3]
memory_bytes = 0x10000000
cmdline = "role=net"

[[spawns]]
recipe = "spawn.toml"
name = "store"
id = 2
cpu_count = 2
memory_bytes = 0x8000000

[[spawns]]
recipe = "other.toml"
name = "calc"
id = 3
cpus = [6, 7]
memory_bytes = 0x8000000
"""


def write_system(directory: Path, kernel: Path, body: str = SYSTEM) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(kernel, directory / "bzImage")
    (directory / "initrd.cpio").write_bytes(b"070701" + b"0" * 104)
    for name in ("spawn", "other"):
        (directory / f"{name}.toml").write_text(f"""
[metadata]
name = "{name}"
version = "1.0.0"
source_date_epoch = {EPOCH}
[kernel]
image = "bzImage"
cmdline = "console=ttyS0 panic=-1"
[initramfs]
image = "initrd.cpio"
""")
    path = directory / "system.toml"
    path.write_text(body)
    return path


@pytest.fixture
def trust(tmp_path: Path) -> Path:
    d = tmp_path / "trust"
    d.mkdir()
    shutil.copy(KEYS / "test-ed25519.pub.pem", d)
    return d


@pytest.fixture
def built(tmp_path: Path, synthetic_kernel: Path) -> Path:
    system = write_system(tmp_path / "src", synthetic_kernel)
    out = tmp_path / "out"
    done = mkspawn("build", system, "-o", out, "--key", KEY)
    assert done.returncode == 0, done.stderr
    return out


def test_build_verify_inspect(built: Path, trust: Path) -> None:
    assert sorted(p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file()) == [
        "baseline.dtb", "bundles/calc.mkb", "bundles/net.mkb", "bundles/store.mkb", "signatures/"
        + json.loads((next((built / "signatures").iterdir())).read_text())["keyid"] + ".sig", "system.json"]
    done = mkspawn("verify", built, "--trust", trust)
    assert done.returncode == 0, done.stderr
    assert "3 bundles verified" in done.stdout
    assert mkspawn("verify", built / "system.json", "--trust", trust).returncode == 0
    manifest = json.loads((built / "system.json").read_text())
    assert [(s["instance"], s["id"], s["cpus"]) for s in manifest["spawns"]] == \
        [("net", 1, [2, 3]), ("store", 2, [4, 5]), ("calc", 3, [6, 7])]
    table = mkspawn("inspect", built).stdout
    assert "net" in table and "2,3" in table and "0x10000000" in table and "store" in table
    report = json.loads(mkspawn("inspect", built, "--json").stdout)
    assert [b["instance"]["name"] for b in report["bundles"]] == ["net", "store", "calc"]
    assert report["bundles"][0]["cmdline"] == "console=ttyS0 panic=-1 role=net"
    dts = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(built / "baseline.dtb")], capture_output=True,
                         text=True, check=True).stdout
    assert "cpus = <0x02 0x03 0x04 0x05 0x06 0x07>;" in dts


def test_same_system_same_bytes(tmp_path: Path, synthetic_kernel: Path) -> None:
    outs = []
    for name in ("a", "b"):
        system = write_system(tmp_path / f"src-{name}", synthetic_kernel)
        out = tmp_path / f"out-{name}"
        assert mkspawn("build", system, "-o", out, "--key", KEY).returncode == 0
        outs.append({p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()})
    assert outs[0] == outs[1]


def test_manifest_round_trips_and_is_strict(built: Path) -> None:
    data = (built / "system.json").read_bytes()
    manifest = SystemManifest.from_bytes(data)
    assert manifest.to_bytes() == data
    assert SystemManifest.from_dict(manifest.to_dict()) == manifest
    bad = [
        ({**manifest.to_dict(), "extra": 1}, "unknown-field"),
        ({**manifest.to_dict(), "_type": "mkspawn-manifest"}, "bad-field"),
        ({**manifest.to_dict(), "format_version": 2}, "unknown-format-version"),
        ({**manifest.to_dict(), "abi_profile": "none"}, "bad-field"),
        ({**manifest.to_dict(), "spawns": []}, "bad-field"),
        ({**manifest.to_dict(), "spawns": [manifest.spawns[0].to_dict()] * 2}, "bad-field"),
        ({**manifest.to_dict(), "baseline": {**manifest.baseline.to_dict(), "path": "../x"}}, "bad-field"),
        ({**manifest.to_dict(), "baseline": {**manifest.baseline.to_dict(), "path": "system.json"}}, "bad-field"),
        ({**manifest.to_dict(), "version": "01.0"}, "bad-field"),
    ]
    for doc, code in bad:
        with pytest.raises(MkspawnError) as caught:
            SystemManifest.from_dict(doc)
        assert caught.value.code == code, (doc, caught.value)


def test_every_byte_flip_of_the_manifest_is_refused(built: Path, trust: Path) -> None:
    store = load_trust_store(trust, must_exist=True)
    verify_system(built, store)
    path = built / "system.json"
    original = path.read_bytes()
    for offset in range(len(original)):
        flipped = bytearray(original)
        flipped[offset] ^= 0x01
        path.write_bytes(bytes(flipped))
        with pytest.raises(MkspawnError) as caught:
            verify_system(built, store)
        assert caught.value.exit_code == 3, (offset, caught.value.render())
    path.write_bytes(original)
    verify_system(built, store)


def test_a_changed_bundle_or_baseline_is_refused(built: Path, trust: Path) -> None:
    bundle = built / "bundles" / "store.mkb"
    data = bytearray(bundle.read_bytes())
    data[-1] ^= 0xFF
    bundle.write_bytes(bytes(data))
    done = mkspawn("verify", built, "--trust", trust)
    assert done.returncode == 3
    assert done.stderr.strip().endswith("[digest-mismatch]") and "store.mkb" in done.stderr
    (built / "baseline.dtb").unlink()
    done = mkspawn("verify", built, "--trust", trust)
    assert done.returncode == 3 and done.stderr.strip().endswith("[missing-member]")


def test_unsigned_and_untrusted_are_refused(tmp_path: Path, synthetic_kernel: Path, trust: Path) -> None:
    system = write_system(tmp_path / "src", synthetic_kernel)
    assert mkspawn("build", system, "-o", tmp_path / "out").returncode == 0
    done = mkspawn("verify", tmp_path / "out", "--trust", trust)
    assert done.returncode == 3 and done.stderr.strip().endswith("[unsigned]")
    other = tmp_path / "other-trust"
    other.mkdir()
    assert mkspawn("build", system, "-o", tmp_path / "out", "--key", KEY).returncode == 0
    done = mkspawn("verify", tmp_path / "out", "--trust", other)
    assert done.returncode == 3 and done.stderr.strip().endswith("[untrusted-key]")


def test_rebuild_replaces_an_earlier_system_but_nothing_else(tmp_path: Path, synthetic_kernel: Path) -> None:
    system = write_system(tmp_path / "src", synthetic_kernel)
    out = tmp_path / "out"
    assert mkspawn("build", system, "-o", out).returncode == 0
    (out / "stale").write_text("from an earlier build")
    assert mkspawn("build", system, "-o", out).returncode == 0
    assert not (out / "stale").exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    done = mkspawn("build", system, "-o", foreign)
    assert done.returncode == 2 and done.stderr.strip().endswith("[exists]")
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "out", "src"]


def test_a_failing_spawn_leaves_nothing(tmp_path: Path, synthetic_kernel: Path) -> None:
    system = write_system(tmp_path / "src", synthetic_kernel)
    (tmp_path / "src" / "other.toml").write_text((tmp_path / "src" / "other.toml").read_text()
                                                 .replace('image = "bzImage"', 'image = "broken"'))
    (tmp_path / "src" / "broken").write_bytes(b"MZ not a kernel" * 100)
    done = mkspawn("build", system, "-o", tmp_path / "out")
    assert done.returncode == 1, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "[contract-failed]" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]


def test_v2_instance_bundle_verifies(tmp_path: Path, synthetic_kernel: Path, trust: Path) -> None:
    """Regression: a v2 bundle with an instance carried two dtb components (instance and
    pool baseline), which verify refuses as ambiguous; the v2 baseline is source only."""
    write_system(tmp_path, synthetic_kernel)
    recipe = tmp_path / "spawn.toml"
    recipe.write_text(recipe.read_text() + """
[instance]
name = "app0"
id = 1
profile = "v2"
cpus = [2, 3]
memory_bytes = 0x10000000
""")
    out = tmp_path / "app0.mkb"
    assert mkspawn("build", recipe, "-o", out, "--key", KEY).returncode == 0
    done = mkspawn("verify", out, "--trust", trust)
    assert done.returncode == 0, done.stderr
    roles = [c["role"] for c in json.loads(mkspawn("inspect", out, "--json").stdout)["components"]]
    assert roles.count("dtb") == 1


@pytest.mark.slow
def test_example_system_shares_one_kernel_build(tmp_path: Path) -> None:
    """recipes/system-demo.toml: three spawns (two recipes) on one kernel cache entry; two name
    their CPUs by APIC id and calc's count lands on the core they leave."""
    system = load_system(REPO / "recipes" / "system-demo.toml")
    result = build_system(system, tmp_path / "out")
    assert len(result.kernels_used) == 1
    assert len(result.kernels_compiled) <= 1
    configs = {b.manifest.provenance.config_sha256 for b in result.bundles}
    assert len(configs) == 1 and "" not in configs
    assert [(e.instance, e.cpus) for e in result.manifest.spawns] == \
        [("net", (2, 3)), ("store", (6, 7, 8, 9)), ("calc", (4, 5))]


def test_system_baseline_keeps_the_recipes_baseline_dts(tmp_path: Path, synthetic_kernel: Path) -> None:
    """Regression: the spawns' recipes keep [devicetree] baseline_dts, but the system's
    pool baseline was generated from [pool] alone, so their extra nodes were dropped.
    Each distinct file is merged once, in spawn order (spawn.toml is two spawns)."""
    system = write_system(tmp_path / "src", synthetic_kernel)
    (tmp_path / "src" / "extra.dtsi").write_text('/ { board { model = "edge-1"; }; };\n')
    recipe = tmp_path / "src" / "spawn.toml"
    recipe.write_text(recipe.read_text() + '[devicetree]\nbaseline_dts = "extra.dtsi"\n')
    shown = mkspawn("dt", system, "--baseline")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count('model = "edge-1";') == 1
    out = tmp_path / "out"
    done = mkspawn("build", system, "-o", out)
    assert done.returncode == 0, done.stderr
    dts = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(out / "baseline.dtb")], capture_output=True,
                         text=True, check=True).stdout
    assert 'model = "edge-1";' in dts


def _tree(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _build_json(system: Path, out: Path, *args: object) -> dict[str, object]:
    done = mkspawn("build", system, "-o", out, "--json", *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def test_noop_rebuild_keeps_the_bundles_and_equals_a_fresh_build(tmp_path: Path, synthetic_kernel: Path) -> None:
    """A rebuild whose inputs did not change keeps each bundle of DIR (the same inode: not
    packed, not signed again), and DIR is byte for byte what a fresh build writes."""
    system = write_system(tmp_path / "src", synthetic_kernel)
    out = tmp_path / "out"
    assert _build_json(system, out, "--key", KEY)["bundles_reused"] == []
    inodes = {p.name: p.stat().st_ino for p in (out / "bundles").iterdir()}
    assert _build_json(system, out, "--key", KEY)["bundles_reused"] == ["net", "store", "calc"]
    assert {p.name: p.stat().st_ino for p in (out / "bundles").iterdir()} == inodes
    fresh = tmp_path / "fresh"
    assert _build_json(system, fresh, "--key", KEY)["bundles_reused"] == []
    assert _tree(out) == _tree(fresh)


def test_a_tampered_stale_or_differently_signed_bundle_is_built_again(tmp_path: Path,
                                                                      synthetic_kernel: Path) -> None:
    system = write_system(tmp_path / "src", synthetic_kernel)
    out = tmp_path / "out"
    _build_json(system, out, "--key", KEY)
    store = out / "bundles" / "store.mkb"
    data = bytearray(store.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a component: the reader's digest check refuses it
    store.write_bytes(bytes(data))
    assert _build_json(system, out, "--key", KEY)["bundles_reused"] == ["net", "calc"]
    # Stale: calc's instance changed, so its manifest (cmdline, handover) differs.
    system.write_text(system.read_text().replace('cpus = [6, 7]\nmemory_bytes = 0x8000000',
                                                 'cpus = [6, 7]\nmemory_bytes = 0x4000000'))
    assert _build_json(system, out, "--key", KEY)["bundles_reused"] == ["net", "store"]
    # Other keys: nothing to keep, since the signatures would differ.
    assert _build_json(system, out)["bundles_reused"] == []
    assert _build_json(system, out, "--key", KEY)["bundles_reused"] == []
    fresh = tmp_path / "fresh"
    _build_json(system, fresh, "--key", KEY)
    assert _tree(out) == _tree(fresh)


def test_a_system_build_imports_neither_the_check_nor_the_loader(tmp_path: Path, synthetic_kernel: Path) -> None:
    """mkimage/system.py and commands/system.py import the QEMU check and the loader where
    check and load run: a (no-op) build has no use for them."""
    from tests.test_startup import imported_by

    system = write_system(tmp_path / "src", synthetic_kernel)
    code, modules = imported_by(tmp_path, "build", system, "-o", tmp_path / "out")
    assert code == 0
    assert {m for m in modules if m.startswith(("mkimage.qemu", "mkimage.loader"))} == set()
