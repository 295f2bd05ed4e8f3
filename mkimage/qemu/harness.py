"""Boot QEMU once under a deadline and parse its serial console as it arrives.

The console goes to a log file line by line (kept for the report and for saving as a
parser test fixture); the parser decides when the verdict is final, and QEMU is then
stopped at once rather than left to shut the spawn down.  Every path — exit, verdict,
deadline, exception, interrupt — ends with QEMU's whole process group killed and reaped
(``mkimage.run.run_until``).
"""

from __future__ import annotations

import logging
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from mkimage import progress
from mkimage.qemu.console import ConsoleParser, Outcome, Stage, clean
from mkimage.qemu.params import QemuParams
from mkimage.run import Streamed, run_until

log = logging.getLogger("mkspawn")

TAIL_LINES = 40


@dataclass(frozen=True, slots=True)
class BootRequest:
    params: QemuParams
    kernel: Path  # the host kernel
    initrd: Path  # the host initramfs
    timeout_s: float
    log_path: Path
    nonce: str | None
    expect: re.Pattern[str] | None = None
    stop_at_verdict: bool = True
    parser: ConsoleParser | None = None  # default: one for ``nonce`` and ``expect``


@dataclass(frozen=True, slots=True)
class BootResult:
    parser: ConsoleParser
    outcome: Outcome
    streamed: Streamed
    tail: tuple[str, ...]  # the last console lines, control sequences removed
    log_path: Path


# What a person watching the boot is told as each stage is reached.
STAGE_LABELS = {Stage.HOST_KERNEL: "host up", Stage.LOADER: "loader", Stage.LOADED: "loaded",
                Stage.EXEC: "kexec", Stage.SPAWN_KERNEL: "spawn kernel", Stage.SPAWN_USERSPACE: "spawn userspace",
                Stage.EXPECT: "expect matched"}


def boot(request: BootRequest) -> BootResult:
    parser = request.parser or ConsoleParser(nonce=request.nonce, expect=request.expect)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    argv = request.params.argv(request.kernel, request.initrd)
    log.info("check: booting %s under %s (deadline %gs, console %s)", request.kernel.name,
             request.params.name, request.timeout_s, request.log_path)
    with progress.task(f"check: boot under {request.params.name}") as task:

        def on_line(t: float, line: str) -> bool:
            shown = clean(line)
            if shown:
                tail.append(shown)
            known = len(parser.stages)
            verdict = parser.feed(line, t)
            for stage in list(parser.stages)[known:]:
                task.step(STAGE_LABELS[stage])
            return verdict and request.stop_at_verdict

        streamed = run_until(argv, stage="check", timeout_s=request.timeout_s, log_path=request.log_path,
                             on_line=on_line)
    outcome = parser.outcome(timed_out=streamed.timed_out)
    return BootResult(parser, outcome, streamed, tuple(tail), request.log_path)
