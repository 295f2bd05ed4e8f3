"""The loader package off-line: what its errnos mean, its flag arithmetic, argument
handling, the stdlib-only rule, and the multikernel steps that need no kernel.

Nothing here calls kexec_file_load or reboot on the build machine; the real calls are
exercised inside QEMU by tests/qemu.  The multikernel protocol runs end to end against
the kernfs stand-in in test_multikernel_double.py, because no multikernel kernel can
run here."""

from __future__ import annotations

import ast
import errno
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mkimage.loader import errnos, multikernel
from mkimage.loader.__main__ import Usage, fail_line, main, parse
from mkimage.loader.errnos import LoaderError, UnsupportedHost
from tests.conftest import missing

LOADER = Path(__file__).resolve().parents[2] / "mkimage" / "loader"
# What the QEMU check's host initramfs carries (mkimage/qemu/hostfs.py finds the rest).
GUEST_STDLIB = {"__future__", "os", "sys", "errno", "ctypes", "time", "struct"}


@pytest.mark.parametrize(("name", "kind"), [
    ("ENOEXEC", "format"), ("EKEYREJECTED", "signature"), ("EBADMSG", "signature"), ("ENOKEY", "signature"),
    ("ENODATA", "signature"), ("ELIBBAD", "signature"), ("EPERM", "permission"), ("EINVAL", "flags"),
])
def test_errno_classes_and_meanings(name: str, kind: str) -> None:
    number = getattr(errno, name)
    assert errnos.errno_name(number) == name
    got_kind, meaning = errnos.describe(number)
    assert got_kind == kind and meaning
    if kind == "signature":
        assert meaning.startswith("signature failure")


def test_kernel_internal_enotsupp_and_unknown_errnos() -> None:
    assert errnos.errno_name(524) == "ENOTSUPP"
    assert errnos.describe(errno.EROFS) == ("other", os.strerror(errno.EROFS))
    e = LoaderError("kexec_file_load", errno.ENOEXEC, "flags=0x0")
    assert e.line().startswith("kexec_file_load: ENOEXEC (8): bad format")
    assert fail_line(e).startswith("op=kexec_file_load errno=ENOEXEC errno_num=8 class=format detail=flags=0x0: ")


@pytest.mark.parametrize(("mk_id", "flags"), [(1, 0x30), (2, 0x50), (2047, 0xFFF0)])
def test_kexec_mk_id_flags(mk_id: int, flags: int) -> None:
    assert multikernel.mk_id_flags(mk_id) == flags
    assert (flags & multikernel.KEXEC_MK_ID_MASK) >> multikernel.KEXEC_MK_ID_SHIFT == mk_id


@pytest.mark.parametrize("mk_id", [0, 2048, -1])
def test_kexec_mk_id_out_of_range(mk_id: int) -> None:
    with pytest.raises(LoaderError) as e:
        multikernel.mk_id_flags(mk_id)
    assert e.value.name == "EINVAL"


def test_argument_parsing() -> None:
    mode, values, lists, flags = parse(["kexec", "--kernel", "k", "--probe", "a", "--probe", "b", "--no-exec"])
    assert (mode, values, lists["--probe"], flags) == ("kexec", {"--kernel": "k"}, ["a", "b"], {"--no-exec"})
    for bad in ([], ["boot"], ["kexec"], ["kexec", "--kernel"], ["kexec", "--kernel", "k", "--bogus"]):
        with pytest.raises(Usage):
            parse(bad)


def test_usage_error_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kexec"]) == 2
    assert "--kernel is required" in capsys.readouterr().err


def test_the_loader_imports_only_what_the_guest_carries() -> None:
    for path in sorted(LOADER.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for guard in ast.walk(tree) if isinstance(guard, ast.If)
                       and isinstance(guard.test, ast.Name) and guard.test.id == "TYPE_CHECKING"
                       for stmt in guard.body for n in ast.walk(stmt)}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for name in names:
                assert name.startswith("mkimage.loader") or name.split(".")[0] in GUEST_STDLIB, \
                    f"{path.name}:{node.lineno} imports {name}"


def test_debian_interpreter_runs_the_loader_isolated() -> None:
    python = Path("/usr/bin/python3.11")
    if not python.is_file():
        missing("Debian's python3.11 is not installed")
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from mkimage.loader.__main__ import main; "
            "sys.exit(main(['kexec']))")
    done = subprocess.run([python, "-S", "-I", "-c", code, str(LOADER.parents[1])], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "--kernel is required" in done.stderr


# --- multikernel steps on LiveHost over a plain directory (a real file tree) ---------------

@pytest.fixture
def plain_root(tmp_path: Path) -> multikernel.LiveHost:
    return multikernel.LiveHost(str(tmp_path / "mk"), filesystems=str(tmp_path / "filesystems"))


def test_stock_host_without_the_filesystem_is_unsupported(tmp_path: Path, plain_root: multikernel.LiveHost) -> None:
    filesystems = tmp_path / "filesystems"
    filesystems.write_text("nodev\tsysfs\nnodev\ttmpfs\nnodev\tproc\n\text4\n")
    with pytest.raises(UnsupportedHost, match="lacks multikernel support"):
        multikernel.ensure_mounted(plain_root)
    filesystems.write_text("nodev\tsysfs\nnodev\tmultikernel\n")
    assert multikernel.has_filesystem(str(filesystems))


def test_mounted_filesystem_is_reused(plain_root: multikernel.LiveHost) -> None:
    Path(plain_root.root).mkdir()
    (Path(plain_root.root) / "device_tree").write_bytes(b"")
    multikernel.ensure_mounted(plain_root)  # no mount attempted (the filesystems file does not exist)


def test_status_is_polled_by_rereading(plain_root: multikernel.LiveHost) -> None:
    instance = Path(plain_root.root) / "instances" / "demo"
    instance.mkdir(parents=True)
    (instance / "status").write_text("ready\n")
    (instance / "id").write_text("7\n")
    assert multikernel.instance_id(plain_root, "demo") == 7
    timer = threading.Timer(0.2, lambda: (instance / "status").write_text("loaded\n"))
    timer.start()
    started = time.monotonic()
    assert multikernel.wait_status(plain_root, "demo", "loaded", 5.0, poll_s=0.02) == "loaded"
    assert 0.1 < time.monotonic() - started < 4
    assert multikernel.wait_status(plain_root, "demo", "active", 0.1, poll_s=0.02) == "loaded"
    assert multikernel.status(plain_root, "gone") == "absent"


def test_console_lines_are_forwarded_until_the_marker() -> None:
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.write(write_fd, b"booting\r\nMKSPAWN-NONCE=abc\nafter\n")
    lines: list[str] = []
    try:
        assert multikernel.read_console(read_fd, lambda line: "NONCE=abc" in line, 2.0, lines.append)
        assert lines == ["booting", "MKSPAWN-NONCE=abc"]
        assert not multikernel.read_console(read_fd, lambda line: False, 0.2, lines.append)
    finally:
        os.close(read_fd)
        os.close(write_fd)
