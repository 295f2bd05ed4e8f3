"""The one way this project starts child processes.

argv lists only, stdin from /dev/null, an explicit environment, a timeout on every
call, stderr captured so a failure can quote its tail.  A missing program names the
Debian package that provides it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mkimage.errors import ToolError

log = logging.getLogger("mkspawn")

# Which Debian package ships each tool we call, so "not found" can say what to install.
TOOL_PACKAGES: dict[str, str] = {
    "cpio": "cpio",
    "dtc": "device-tree-compiler",
    "fdtget": "device-tree-compiler",
    "iasl": "acpica-tools",
    "sbsign": "sbsigntool",
    "sbverify": "sbsigntool",
    "qemu-system-x86_64": "qemu-system-x86",
    "busybox": "busybox-static",
    "make": "make",
    "depmod": "kmod",
    "gcc": "gcc",
    "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu",
    "aarch64-linux-gnu-ld": "binutils-aarch64-linux-gnu",
    "x86_64-linux-gnu-gcc": "gcc-x86-64-linux-gnu",
    "x86_64-linux-gnu-ld": "binutils-x86-64-linux-gnu",
    "qemu-system-aarch64": "qemu-system-arm",
    "ccache": "ccache",
    "tar": "tar",
    "gzip": "gzip",
    "xz": "xz-utils",
    "zstd": "zstd",
    "lz4": "lz4",
    "git": "git",
    "patch": "patch",
    "openssl": "openssl",
}

STDERR_TAIL_LINES = 20

# The baseline environment of every child: no locale surprises, nothing inherited by
# accident.  Callers add what a tool needs (SOURCE_DATE_EPOCH, KBUILD_BUILD_*, ...).
BASE_ENV_KEYS = ("PATH", "HOME", "TMPDIR", "CCACHE_DIR")


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in BASE_ENV_KEYS if k in os.environ}
    env["LC_ALL"] = "C.UTF-8"
    env["TZ"] = "UTC"
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True, slots=True)
class Completed:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes


# Debian keeps depmod and friends in sbin, which a normal user's PATH lacks.
SBIN_PATH = "/usr/local/sbin:/usr/sbin:/sbin"


def which(tool: str) -> str:
    """Absolute path of ``tool`` (on PATH, else in the sbin directories) or a ToolError
    naming the package to install."""
    found = shutil.which(tool) or shutil.which(tool, path=SBIN_PATH)
    if found is None:
        pkg = TOOL_PACKAGES.get(tool)
        hint = f"install the Debian package '{pkg}'" if pkg else None
        raise ToolError(
            f"{tool}: not found on PATH" + (f" ({hint})" if hint else ""),
            argv=[tool],
            returncode=127,
            code="tool-missing",
            hint=hint,
        )
    return found


def _tail(data: bytes, lines: int = STDERR_TAIL_LINES) -> str:
    text = data.decode("utf-8", "replace").rstrip()
    return "\n".join(text.splitlines()[-lines:])


def _describe_status(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exited with status {rc}"


def run(
    argv: Sequence[str | Path],
    *,
    stage: str,
    timeout_s: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    check: bool = True,
    stdin_path: Path | None = None,
    stdout_path: Path | None = None,
) -> Completed:
    """Run a program to completion.

    ``stdout_path`` streams stdout to a file (for large outputs such as compressed
    archives); otherwise stdout is captured.
    """
    args = [str(a) for a in argv]
    args[0] = which(args[0]) if "/" not in args[0] else args[0]
    log.debug("$ %s", shlex.join(args))
    full_env = base_env(env)
    with contextlib.ExitStack() as files:
        stdin: IO[bytes] | int = files.enter_context(open(stdin_path, "rb")) if stdin_path else subprocess.DEVNULL
        stdout: IO[bytes] | int = files.enter_context(open(stdout_path, "wb")) if stdout_path else subprocess.PIPE
        try:
            proc = subprocess.run(
                args,
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=full_env,
                cwd=cwd,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise ToolError(
                f"{stage}: {Path(args[0]).name} timed out after {timeout_s:g}s",
                argv=args,
                stderr_tail=_tail(e.stderr or b""),
                code="tool-timeout",
            ) from e
    result = Completed(args, proc.returncode, proc.stdout or b"", proc.stderr or b"")
    if check and proc.returncode != 0:
        tail = _tail(proc.stderr)
        raise ToolError(
            f"{stage}: {Path(args[0]).name} {_describe_status(proc.returncode)}"
            + (f": {tail.splitlines()[-1]}" if tail else ""),
            argv=args,
            returncode=proc.returncode,
            stderr_tail=tail,
        )
    return result


def tool_version(tool: str, *args: str) -> str:
    """First line a tool prints about its version, for build provenance."""
    try:
        done = run([tool, *(args or ("--version",))], stage="provenance", timeout_s=30, check=False)
    except ToolError:
        return "missing"
    text = (done.stdout or done.stderr).decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text else "unknown"


def run_streaming(
    argv: Sequence[str | Path],
    *,
    stage: str,
    timeout_s: float,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Run a long program, teeing stdout and stderr (merged, in order) to ``log_path``.

    ``on_line`` sees each output line as it arrives (for progress).  The child gets
    its own process group so a timeout or an interrupt also ends its children (make's
    compilers).  A failure raises ToolError citing the log and quoting its tail.
    """
    tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)

    def keep(_t: float, line: str) -> bool:
        tail.append(line)
        if on_line is not None:
            on_line(line)
        return False

    done = run_until(argv, stage=stage, timeout_s=timeout_s, log_path=log_path, on_line=keep, env=env, cwd=cwd)
    text = "\n".join(tail)
    name = Path(done.argv[0]).name
    if done.timed_out:
        raise ToolError(
            f"{stage}: {name} timed out after {timeout_s:g}s (log: {log_path})",
            argv=done.argv,
            stderr_tail=text,
            code="tool-timeout",
        )
    if done.returncode != 0:
        rc = -1 if done.returncode is None else done.returncode
        raise ToolError(
            f"{stage}: {name} {_describe_status(rc)} (log: {log_path})" + (f": {tail[-1]}" if tail else ""),
            argv=done.argv,
            returncode=rc,
            stderr_tail=text,
        )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@dataclass(frozen=True, slots=True)
class Streamed:
    """How a streamed program ended: its status (None when we killed it), whether the
    deadline fired, whether ``on_line`` asked to stop, and the wall time taken."""

    argv: list[str]
    returncode: int | None
    timed_out: bool
    stopped: bool
    elapsed_s: float


def run_until(
    argv: Sequence[str | Path],
    *,
    stage: str,
    timeout_s: float,
    log_path: Path,
    on_line: Callable[[float, str], bool] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Streamed:
    """Run a program whose output is evidence (a VM's serial console) under a deadline.

    stdout and stderr are merged and teed line by line to ``log_path`` as they arrive.
    ``on_line(t, line)`` sees each line with the seconds since start; returning True
    ends the program at once.  Unlike ``run_streaming`` a non-zero status is not an
    error here: the caller judges the output.  Whatever happens — exit, deadline, stop,
    an exception or an interrupt in the caller — the whole process group is killed and
    reaped before this returns, so no child outlives the call.
    """
    args = [str(a) for a in argv]
    args[0] = which(args[0]) if "/" not in args[0] else args[0]
    log.debug("$ %s", shlex.join(args))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    timed_out = threading.Event()
    stopped = False
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8", errors="replace") as log_file:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=base_env(env),
            cwd=cwd,
            start_new_session=True,
        )

        def expire() -> None:
            timed_out.set()
            _kill_group(proc)

        timer = threading.Timer(timeout_s, expire)
        timer.daemon = True
        timer.start()
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                log_file.write(line + "\n")
                log_file.flush()
                if on_line is not None and on_line(time.monotonic() - start, line):
                    stopped = True
                    break
        finally:
            timer.cancel()
            # Also on a normal exit: the leader may be gone while a child lingers.
            _kill_group(proc)
            proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
    rc = None if (stopped or timed_out.is_set()) else proc.returncode
    return Streamed(args, rc, timed_out.is_set(), stopped, time.monotonic() - start)
