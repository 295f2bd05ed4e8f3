"""The multikernel protocol end to end, against a STAND-IN host (kernfs_double.py): no
multikernel kernel can run here.  The baseline and overlay are the blobs our devicetree
stage builds with dtc, and the loader entry is the one `mkspawn load --mode multikernel`
calls (multikernel.run_instance)."""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkimage.devicetree.build import build_devicetree
from mkimage.devicetree.dts import node, text
from mkimage.devicetree.fdt import Fdt, decode_fdt, encode_fdt
from mkimage.loader import multikernel
from mkimage.loader.errnos import LoaderError
from tests.conftest import needs_tool
from tests.devicetree.dt_helpers import load, recipe_text
from tests.loader.kernfs_double import Instance, MultikernelHostDouble

MK2 = multikernel.PROFILES["mk2"]


@pytest.fixture
def blobs(tmp_path: Path) -> dict[str, bytes]:
    needs_tool("dtc")
    files = build_devicetree(load(tmp_path, recipe_text("mk2")), tmp_path / "work")
    return {f.path.suffix: f.path.read_bytes() for f in files if f.role.value != "dts"}


@pytest.fixture
def host() -> Iterator[MultikernelHostDouble]:
    double = MultikernelHostDouble(spawn_console=["booting", "MKSPAWN-READY release=x"])
    yield double
    double.close()


def plan(tmp_path: Path, blobs: dict[str, bytes], **changes: object) -> multikernel.Plan:
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    args: dict[str, object] = dict(profile=MK2, kernel=str(kernel), initrd=None, cmdline="console=mktty0",
                                   dtb=blobs[".dtb"], dtbo=blobs[".dtbo"], name=None, mk_id=None,
                                   ready_marker="MKSPAWN-READY", timeout_s=5.0)
    args.update(changes)
    return multikernel.Plan(**args)  # type: ignore[arg-type]


def run(p: multikernel.Plan, host: MultikernelHostDouble) -> tuple[bool, list[str]]:
    lines: list[str] = []
    seen = multikernel.run_instance(p, lambda stage, detail: lines.append(f"{stage}: {detail}"), host)
    return seen, lines


def test_full_life_cycle_uses_the_name_we_wrote(tmp_path: Path, blobs: dict[str, bytes],
                                                host: MultikernelHostDouble) -> None:
    # Failed before the fix: tx_N/instance reads "/instances" and the loader read
    # instances//instances/id (FileNotFoundError).
    seen, lines = run(plan(tmp_path, blobs), host)
    assert seen
    assert "overlay: tx_2 instance=app0 target=/instances" in lines
    assert "instance: name=app0 id=1 status=ready" in lines
    assert "console: MKSPAWN-READY release=x" in lines
    assert lines[-1] == "deleted: tx_2" and host.instances == {} and host.txs == {}
    assert [c for c in host.calls if c.startswith("reboot")] == ["reboot 0x4d4b4c49 1", "reboot 0x4d4b4c48 1"]


def test_a_refused_overlay_is_rolled_back_and_reported(tmp_path: Path, blobs: dict[str, bytes],
                                                       host: MultikernelHostDouble) -> None:
    # The stand-in, like overlay.c, refuses an instance-create with a flat device-names list
    # and still accepts the write: only tx_N/status says "failed".
    root = decode_fdt(blobs[".dtbo"]).root
    (frag,) = root.children[:1]
    (overlay,) = frag.children
    (create,) = overlay.children
    resources = create.children[0]
    bad_resources = dataclasses.replace(resources, properties=(*resources.properties, ("device-names", b"nic0\0")))
    bad_create = dataclasses.replace(create, children=(bad_resources, *create.children[1:]))
    bad_frag = dataclasses.replace(frag, children=(dataclasses.replace(overlay, children=(bad_create,)),))
    bad = encode_fdt(Fdt(dataclasses.replace(root, children=(bad_frag, *root.children[1:]))))
    with pytest.raises(LoaderError) as e:
        run(plan(tmp_path, blobs, dtbo=bad), host)
    assert e.value.op == "write-overlay" and e.value.errno == errno.EINVAL
    assert "tx_2 status is 'failed'" in e.value.detail and "tx_2 rolled back and removed" in e.value.detail
    assert host.txs == {} and host.instances == {}


def test_a_short_write_is_caught_and_its_transaction_removed(tmp_path: Path, blobs: dict[str, bytes]) -> None:
    # kernfs hands overlays/new one page per write; make the page smaller than our overlay.
    small = MultikernelHostDouble(page_bytes=len(blobs[".dtbo"]) // 2)
    with pytest.raises(LoaderError) as e:
        run(plan(tmp_path, blobs), small)
    assert e.value.errno == errno.EFBIG
    assert f"took {len(blobs['.dtbo']) // 2} of {len(blobs['.dtbo'])} bytes" in e.value.detail
    # A cut blob cannot be rolled back either (its fragments are unreadable): said, not hidden.
    assert "rolling tx_2 back failed too (EINVAL); it stays behind" in e.value.detail
    assert small.read("overlays/tx_2/status") == b"failed\n"


def test_an_existing_instance_of_that_name_is_never_overwritten(tmp_path: Path, blobs: dict[str, bytes],
                                                                host: MultikernelHostDouble) -> None:
    # Rolling back a failed instance-create would destroy the other app0 (overlay.c
    # mk_overlay_undo_instance_create), so the loader does not write at all.
    run(plan(tmp_path, blobs), host)
    host.instances["app0"] = Instance(9)
    with pytest.raises(LoaderError) as e:
        run(plan(tmp_path, blobs), host)
    assert e.value.errno == errno.EEXIST and host.instances == {"app0": Instance(9)}
    assert not [c for c in host.calls[-3:] if c.startswith("write overlays/new")]


def test_second_baseline_is_busy_and_counts_as_present(tmp_path: Path, blobs: dict[str, bytes],
                                                       host: MultikernelHostDouble) -> None:
    _, first = run(plan(tmp_path, blobs), host)
    _, second = run(plan(tmp_path, blobs), host)
    assert "baseline: written" in first and "baseline: already present" in second


def test_a_name_that_contradicts_the_overlay_is_refused(tmp_path: Path, blobs: dict[str, bytes],
                                                        host: MultikernelHostDouble) -> None:
    with pytest.raises(LoaderError, match="creates 'app0', not 'other'"):
        run(plan(tmp_path, blobs, name="other"), host)
    assert host.txs == {}


def test_overlay_instance_name_reads_what_we_wrote(blobs: dict[str, bytes]) -> None:
    assert multikernel.overlay_instance_name(blobs[".dtbo"]) == "app0"
    assert multikernel.overlay_instance_name(blobs[".dtb"]) is None
    assert multikernel.overlay_instance_name(blobs[".dtbo"][:100]) is None
    assert multikernel.overlay_instance_name(b"") is None


# ---- the stand-in's own rules (each mirrors one kernel function) --------------------------------

def test_stand_in_mirrors_kernfs_rules(blobs: dict[str, bytes], host: MultikernelHostDouble) -> None:
    with pytest.raises(OSError) as e:
        host.mkdir("instances/new")  # kernfs.c mk_kernfs_mkdir
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        host.rmdir("instances/app0")  # overlay.c mk_overlay_rmdir
    assert e.value.errno == errno.EPERM
    with pytest.raises(OSError) as e:
        host.write("overlays/new", b"not an fdt")  # mk_overlay_new_write: fdt_check_header, no tx
    assert e.value.errno == errno.EINVAL and host.txs == {}
    assert host.write("device_tree", blobs[".dtb"]) == len(blobs[".dtb"])
    with pytest.raises(OSError) as e:
        host.write("device_tree", blobs[".dtb"])  # baseline.c: already applied
    assert e.value.errno == errno.EBUSY
    unknown = encode_fdt(Fdt(node("", node("fragment@0", ("target-path", text("/elsewhere")),
                                           node("__overlay__"))).to_fdt()))
    assert host.write("overlays/new", unknown) == len(unknown)  # the write succeeds …
    assert host.read("overlays/tx_2/status") == b"failed\n"  # … and the transaction says failed
    assert host.read("overlays/tx_2/instance") == b"/elsewhere\n"
    assert sorted(host.listdir("overlays")) == ["new", "tx_2"]
