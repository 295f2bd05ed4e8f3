"""Progress: bars on a terminal (rendered by rich under a real pseudo-terminal), plain
one-line stage messages everywhere else, and the stages' own reports of their work."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkimage import progress
from mkimage.kernel.build import build_kernel
from mkimage.kernel.fetch import fetch_url
from mkimage.qemu.console import Stage
from mkimage.qemu.harness import STAGE_LABELS
from mkimage.recipe.model import KernelSource, KernelSpec
from tests.conftest import run_mkspawn
from tests.kernel.test_build import stand_in_tree
from tests.kernel.test_source import PAYLOAD, PAYLOAD_SHA, Served, server  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "demo.toml"  # its initramfs packs busybox and the init: a real, quick pack
BAR = "━"


def run_in_pty(*args: object, cwd: Path) -> tuple[int, str]:
    """The CLI with stdin, stdout and stderr on one pseudo-terminal, as a person runs it."""
    master, slave = pty.openpty()
    env = {"PATH": os.environ["PATH"], "HOME": str(Path.home()), "TERM": "xterm-256color", "COLUMNS": "120",
           "LINES": "40", "XDG_CONFIG_HOME": "/nonexistent/mkspawn-test-config"}
    proc = subprocess.Popen([sys.executable, "-m", "mkimage", *map(str, args)], stdin=slave, stdout=slave,
                            stderr=slave, env=env, cwd=cwd)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
    finally:
        os.close(master)
        proc.kill() if proc.poll() is None else None
        code = proc.wait(timeout=30)
    return code, out.decode("utf-8", "replace")


def test_a_terminal_shows_a_bar_with_bytes(tmp_path: Path) -> None:
    code, screen = run_in_pty("initramfs", RECIPE, "-o", tmp_path / "i.cpio", cwd=tmp_path)
    assert code == 0, screen
    assert "initramfs: pack" in screen and BAR in screen
    assert "MiB" in screen  # bytes packed of the expected total
    assert "\x1b[?25l" in screen and "\x1b[?25h" in screen  # rich hid the cursor and gave it back
    # The command's own result starts on a line of its own, after the bars stopped.
    result = screen.index(f"{tmp_path / 'i.cpio'}: ")
    assert screen[:result].endswith(("\n", "\x1b[?25h"))
    assert "mkspawn: initramfs: pack" not in screen  # no plain lines on a terminal


@pytest.mark.parametrize("flag", ["--quiet", "--json"])
def test_quiet_and_json_on_a_terminal_are_plain(tmp_path: Path, flag: str) -> None:
    args = ["--quiet", "initramfs", RECIPE] if flag == "--quiet" else ["initramfs", RECIPE, "--json"]
    code, screen = run_in_pty(*args, "-o", tmp_path / "i.cpio", cwd=tmp_path)
    assert code == 0, screen
    assert BAR not in screen and "\x1b[" not in screen
    assert "mkspawn: initramfs: pack (" in screen and "mkspawn: initramfs: pack: done (" in screen


def test_not_a_terminal_gets_one_line_per_stage(tmp_path: Path) -> None:
    done = run_mkspawn("initramfs", RECIPE, "-o", tmp_path / "i.cpio", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("mkspawn: initramfs: pack (") and lines[0].endswith(" MiB) …")
    assert lines[1].startswith("mkspawn: initramfs: pack: done (") and lines[1].endswith(" s)")
    assert "\x1b" not in done.stderr and "\r" not in done.stderr


def test_kernel_compile_expects_the_previous_builds_object_count(tmp_path: Path) -> None:
    tree = stand_in_tree(tmp_path, "\t@for i in $$(seq 1 37); do echo \"  CC      obj$$i.o\"; done\n"
                                   "\t@echo '  LD      vmlinux'\n"
                                   "\t@mkdir -p $(O)/arch/x86/boot $(O)/include/config\n"
                                   "\t@echo image > $(O)/arch/x86/boot/bzImage; echo elf > $(O)/vmlinux\n"
                                   "\t@echo map > $(O)/System.map\n"
                                   "\t@echo 9.9.9-test > $(O)/include/config/kernel.release\n")
    spec = KernelSpec(source=KernelSource(dir=tree), options={"A": "y"})
    shown = io.StringIO()
    progress.bind(progress.PlainRenderer(shown))
    try:
        build_kernel(spec, arch="x86_64", cache_root=tmp_path / "cache", source_date_epoch=0, use_ccache=False)
        first = shown.getvalue()
        shown.truncate(0)
        # Another build of the same tree (another key): its bar's total is the first's count.
        build_kernel(spec, arch="x86_64", cache_root=tmp_path / "cache", source_date_epoch=1, use_ccache=False)
        second = shown.getvalue()
    finally:
        progress.bind(None)
    assert "mkspawn: kernel: compile …" in first.splitlines()
    assert "mkspawn: kernel: compile (37 objects expected) …" in second
    assert "mkspawn: kernel: compile: linking vmlinux (37 objects compiled so far)" in second
    assert "mkspawn: kernel: compile: done (37 objects, " in second


def test_a_download_reports_its_bytes(server: tuple[str, Served], tmp_path: Path) -> None:  # noqa: F811
    base, served = server
    served.files["/linux.tar.xz"] = PAYLOAD
    seen: list[tuple[float, float | None]] = []

    class Recorder(progress.PlainRenderer):
        def advanced(self, task: progress.Task) -> None:
            seen.append((task.completed, task.total))

    shown = io.StringIO()
    progress.bind(Recorder(shown))
    try:
        fetch_url(f"{base}/linux.tar.xz", PAYLOAD_SHA, cache_root=tmp_path)
    finally:
        progress.bind(None)
    assert seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert shown.getvalue().splitlines()[0] == "mkspawn: kernel: download linux.tar.xz …"


def test_every_boot_stage_has_a_label() -> None:
    assert set(STAGE_LABELS) == set(Stage)
    assert [STAGE_LABELS[s] for s in (Stage.HOST_KERNEL, Stage.LOADER, Stage.LOADED, Stage.SPAWN_KERNEL,
                                      Stage.SPAWN_USERSPACE)] == [
        "host up", "loader", "loaded", "spawn kernel", "spawn userspace"]


def test_a_failed_task_prints_no_done_line() -> None:
    shown = io.StringIO()
    progress.bind(progress.PlainRenderer(shown))
    try:
        with pytest.raises(RuntimeError), progress.task("x: work", total=3, unit="objects") as task:
            task.advance()
            raise RuntimeError
    finally:
        progress.bind(None)
    assert shown.getvalue() == "mkspawn: x: work (3 objects expected) …\n"


def test_nothing_is_shown_unless_a_renderer_is_bound(capsys: pytest.CaptureFixture[str]) -> None:
    with progress.task("x: work", total=1) as task:
        task.advance()
        task.step("halfway")
    assert capsys.readouterr() == ("", "")


@pytest.fixture(autouse=True)
def _unbound() -> Iterator[None]:
    yield
    progress.bind(None)


def test_a_registry_transfer_reports_its_bytes(tmp_path: Path, synthetic_kernel: Path) -> None:
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(b"070701" + os.urandom(9 << 20))  # over the size that earns a progress line
    (tmp_path / "r.toml").write_text(f'[metadata]\nname = "big"\nversion = "1"\n'
                                     f'[kernel]\nimage = "{synthetic_kernel}"\ncmdline = "console=ttyS0"\n'
                                     f'[initramfs]\nimage = "{initrd}"\n')
    done = run_mkspawn("build", tmp_path / "r.toml", "-o", tmp_path / "big.mkb")
    assert done.returncode == 0, done.stderr
    done = run_mkspawn("push", tmp_path / "big.mkb", f"oci:{tmp_path / 'layout'}:big")
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("mkspawn: push: ")]
    assert len(lines) == 2, done.stderr
    name = lines[0].removesuffix(" (9.0 MiB) …")
    assert name != lines[0] and lines[1].startswith(f"{name}: done (9.0 MiB, ")


def test_a_first_kernel_compile_expects_the_kbuild_object_list(tmp_path: Path) -> None:
    tree = stand_in_tree(tmp_path, "\t@for i in 1 2 3 4 5; do echo \"  CC      init/o$$i.o\"; done\n"
                                   "\t@mkdir -p $(O)/arch/x86/boot $(O)/include/config\n"
                                   "\t@echo image > $(O)/arch/x86/boot/bzImage; echo elf > $(O)/vmlinux\n"
                                   "\t@echo map > $(O)/System.map\n"
                                   "\t@echo 9.9.9-test > $(O)/include/config/kernel.release\n")
    (tree / "Kbuild").write_text("obj-y += init/\nobj-$(CONFIG_B) += off/\n")
    (tree / "init").mkdir()
    # Counted: a, b, c (CONFIG_A=y) and the composite's parts p, q; not d (CONFIG_B is
    # off), not s (assembler: make says AS, not CC), not x (its directory is off).
    (tree / "init" / "Makefile").write_text("obj-y += a.o \\\n\tb.o\nobj-$(CONFIG_A) += c.o\nobj-$(CONFIG_B) += d.o\n"
                                            "obj-y += comp.o s.o\ncomp-y := p.o q.o\n")
    for name in ("a.c", "b.c", "c.c", "d.c", "p.c", "q.c", "s.S"):
        (tree / "init" / name).write_text("")
    (tree / "off").mkdir()
    (tree / "off" / "Makefile").write_text("obj-y += x.o\n")
    (tree / "off" / "x.c").write_text("")
    shown = io.StringIO()
    progress.bind(progress.PlainRenderer(shown))
    try:
        build_kernel(KernelSpec(source=KernelSource(dir=tree), options={"A": "y"}), arch="x86_64",
                     cache_root=tmp_path / "cache", source_date_epoch=0, use_ccache=False)
    finally:
        progress.bind(None)
    assert "mkspawn: kernel: compile (5 objects expected) …" in shown.getvalue()
