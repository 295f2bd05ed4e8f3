"""Parse a check's serial console into the stages the boot reached.

Input is the console line by line, live from QEMU (with the seconds since start) or
from a saved log (no times).  Markers come from the kernels (banner, kexec, panic) and
from mkspawn's loader and probe (``MKSPAWN-…``, printed by mkimage/loader/__main__.py
and the probe script).  The parser tells a refused load from a crash, a timeout from
a machine that stopped talking, and a spawn that booted from one that only said so:
userspace counts only when this run's nonce is printed after the jump.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

BANNER = "Linux version "
KEXEC_START = "kexec_core: Starting new kernel"
PANIC = "Kernel panic - not syncing"
TRACEBACKS = ("Traceback (most recent call last)", "Fatal Python error")
NONCE_PREFIX = "MKSPAWN-NONCE="
READY = "MKSPAWN-READY"
# The loader's system mode tags each line about one spawn: MKSPAWN-SPAWN=<name> <marker line>.
SPAWN_TAG = "MKSPAWN-SPAWN="

# SeaBIOS and the kernel's console reset leave terminal control sequences behind.
_ESCAPES = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[@-Z\\-_]|c)")
_FAIL = re.compile(r"MKSPAWN-(?P<what>LOAD-FAIL|EXEC-FAIL) op=(?P<op>\S+) errno=(?P<name>\S+) "
                   r"errno_num=(?P<num>\d+) class=(?P<cls>\S+)(?: detail=\S+)?: (?P<meaning>.*)")
_PROBE = re.compile(r"MKSPAWN-PROBE path=(?P<path>\S+) result=(?P<result>accepted|refused)"
                    r"(?: op=\S+ errno=(?P<name>\S+) errno_num=(?P<num>\d+))?")


class Stage(enum.StrEnum):
    """Stages in the order a successful check passes them."""

    HOST_KERNEL = "host-kernel"  # the host's banner
    LOADER = "loader"  # mkspawn's loader started in the host's userspace
    LOADED = "loaded"  # kexec_file_load accepted the spawn, kexec_loaded = 1
    EXEC = "exec"  # the host jumped (kexec_core: Starting new kernel)
    SPAWN_KERNEL = "spawn-kernel"  # the spawn's banner
    SPAWN_USERSPACE = "spawn-userspace"  # the probe printed this run's nonce
    EXPECT = "expect"  # the recipe's [check] expect pattern matched


class Outcome(enum.StrEnum):
    PASSED = "passed"
    LOAD_REFUSED = "load-refused"  # the kernel said no, with an errno
    UNSUPPORTED_HOST = "unsupported-host"  # e.g. no multikernel support
    HOST_CRASHED = "host-crashed"
    SPAWN_CRASHED = "spawn-crashed"
    LOADER_CRASHED = "loader-crashed"  # a Python traceback in the host's userspace
    EXPECT_MISSED = "expect-missed"  # the spawn ran, the pattern never came
    TIMEOUT = "timeout"
    STOPPED_EARLY = "stopped-early"  # QEMU exited before a verdict
    NO_OUTPUT = "no-output"


@dataclass(frozen=True, slots=True)
class Errno:
    name: str
    number: int
    kind: str  # format, signature, flags, permission, ...
    meaning: str
    op: str


@dataclass(frozen=True, slots=True)
class ProbeVerdict:
    path: str
    accepted: bool
    errno: str | None


@dataclass
class ConsoleParser:
    """Feed lines as they arrive; ``finished`` says when the verdict cannot change."""

    nonce: str | None
    expect: re.Pattern[str] | None = None
    stages: dict[Stage, float | None] = field(default_factory=dict)
    errno: Errno | None = None
    unsupported: str | None = None
    panic: str | None = None
    traceback: bool = False
    foreign_nonce: str | None = None  # a nonce that is not this run's: a stale artefact
    probes: list[ProbeVerdict] = field(default_factory=list)
    loader_ended: bool = False
    lines: int = 0
    expect_matched: bool = False  # anywhere in the spawn's console, its kernel log included

    def feed(self, line: str, t: float | None = None) -> bool:
        """Take one line; True once the verdict is final (QEMU may be stopped)."""
        line = _ESCAPES.sub("", line).rstrip()
        self.lines += 1
        if BANNER in line:
            self._reach(Stage.SPAWN_KERNEL if Stage.EXEC in self.stages else Stage.HOST_KERNEL, t)
        elif (KEXEC_START in line or line.startswith("MKSPAWN-MK stage=started")
              or line.startswith("MKSPAWN-EXEC") and not line.startswith("MKSPAWN-EXEC-FAIL")):
            self._reach(Stage.EXEC, t)
        elif line.startswith("MKSPAWN-LOADER-START"):
            self._reach(Stage.LOADER, t)
        elif line.startswith(("MKSPAWN-LOAD-OK", "MKSPAWN-MK stage=loaded")):
            self._reach(Stage.LOADED, t)
        elif line.startswith("MKSPAWN-LOADER-END"):
            self.loader_ended = True
        elif line.startswith("MKSPAWN-UNSUPPORTED"):
            self.unsupported = line.removeprefix("MKSPAWN-UNSUPPORTED").strip()
        elif (m := _FAIL.search(line)) is not None and self.errno is None:
            self.errno = Errno(m["name"], int(m["num"]), m["cls"], m["meaning"], m["op"])
        elif (m := _PROBE.search(line)) is not None:
            self.probes.append(ProbeVerdict(m["path"], m["result"] == "accepted", m["name"]))
        elif PANIC in line and self.panic is None:
            self.panic = line[line.index(PANIC):]
        elif any(t in line for t in TRACEBACKS) and Stage.EXEC not in self.stages:
            self.traceback = True
        elif NONCE_PREFIX in line:
            seen = (line.split(NONCE_PREFIX, 1)[1].split() or [""])[0]
            if seen == self.nonce and Stage.EXEC in self.stages:
                self._reach(Stage.SPAWN_USERSPACE, t)
            elif seen != self.nonce:
                self.foreign_nonce = seen
        if self.expect is not None and Stage.EXEC in self.stages and self.expect.search(line):
            self.expect_matched = True
        # The pattern may come before the nonce (a kernel line) or after it (userland).
        if self.expect_matched and Stage.SPAWN_USERSPACE in self.stages:
            self._reach(Stage.EXPECT, t)
        return self.finished

    def _reach(self, stage: Stage, t: float | None) -> None:
        self.stages.setdefault(stage, t)

    @property
    def finished(self) -> bool:
        if self.panic is not None or self.unsupported is not None or self.loader_ended:
            return True
        done = Stage.EXPECT if self.expect is not None else Stage.SPAWN_USERSPACE
        return done in self.stages

    @property
    def reached(self) -> Stage | None:
        return max(self.stages, key=list(Stage).index) if self.stages else None

    def outcome(self, *, timed_out: bool) -> Outcome:
        done = Stage.EXPECT if self.expect is not None else Stage.SPAWN_USERSPACE
        if done in self.stages:
            return Outcome.PASSED
        if self.unsupported is not None:
            return Outcome.UNSUPPORTED_HOST
        if self.errno is not None:
            return Outcome.LOAD_REFUSED
        if self.traceback:
            return Outcome.LOADER_CRASHED
        if self.panic is not None:
            return Outcome.SPAWN_CRASHED if Stage.EXEC in self.stages else Outcome.HOST_CRASHED
        if self.expect is not None and Stage.SPAWN_USERSPACE in self.stages and not timed_out:
            return Outcome.EXPECT_MISSED
        if timed_out:
            return Outcome.TIMEOUT
        return Outcome.STOPPED_EARLY if self.lines else Outcome.NO_OUTPUT


def parse_log(lines: Iterable[str], nonce: str | None, expect: re.Pattern[str] | None = None) -> ConsoleParser:
    """Parse a saved console log (no timings)."""
    parser = ConsoleParser(nonce=nonce, expect=expect)
    for line in lines:
        parser.feed(line)
    return parser


def clean(line: str) -> str:
    """A console line without terminal control sequences, for showing to people."""
    return _ESCAPES.sub("", line).rstrip()
