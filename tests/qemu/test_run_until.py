"""mkimage.run.run_until: a deadline, early stop, a tee'd log, and no survivors."""

from __future__ import annotations

from pathlib import Path

from mkimage.run import run_until


def alive_with_arg(arg: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z" and arg.encode() in argv:
                pids.append(int(entry.name))
    return pids


def test_deadline_kills_the_whole_process_group(tmp_path: Path) -> None:
    marker = "313.25"  # a sleep length no other process uses
    done = run_until(["sh", "-c", f"sleep {marker} & echo started; wait"], stage="test", timeout_s=1.0,
                     log_path=tmp_path / "log")
    assert done.timed_out and done.returncode is None and not done.stopped
    assert 0.9 < done.elapsed_s < 10
    assert (tmp_path / "log").read_text() == "started\n"
    assert alive_with_arg(marker) == []


def test_on_line_can_stop_early_and_sees_times(tmp_path: Path) -> None:
    seen: list[tuple[float, str]] = []

    def on_line(t: float, line: str) -> bool:
        seen.append((t, line))
        return line == "two"

    marker = "313.5"
    done = run_until(["sh", "-c", f"echo one; echo two; exec sleep {marker}"], stage="test", timeout_s=30,
                     log_path=tmp_path / "log", on_line=on_line)
    assert done.stopped and not done.timed_out and done.returncode is None
    assert [line for _, line in seen] == ["one", "two"]
    assert all(t >= 0 for t, _ in seen)
    assert alive_with_arg(marker) == []


def test_exit_status_is_returned_not_raised(tmp_path: Path) -> None:
    done = run_until(["sh", "-c", "echo out; echo err >&2; exit 3"], stage="test", timeout_s=30,
                     log_path=tmp_path / "log")
    assert done.returncode == 3 and not done.timed_out and not done.stopped
    assert sorted((tmp_path / "log").read_text().split()) == ["err", "out"]
