"""The console parser on saved real logs (tests/qemu/data/, README there says how each
was made) and on the edge cases those logs cannot show."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mkimage.qemu.console import ConsoleParser, Outcome, Stage, clean, parse_log

DATA = Path(__file__).with_name("data")

# log file, this run's nonce, expect, timed out → outcome, last stage, errno name
SAVED = [
    ("debian-host-minimal-spawn.log", "a119ec5bc1a595f7", None, False,
     Outcome.PASSED, Stage.SPAWN_USERSPACE, None),
    # QEMU was stopped at the nonce: a pattern the spawn would print later is missed.
    ("debian-host-minimal-spawn.log", "a119ec5bc1a595f7", r"hello-from-\w+", False,
     Outcome.EXPECT_MISSED, Stage.SPAWN_USERSPACE, None),
    ("debian-host-minimal-spawn-expect.log", "731a27a1549657d9", r"spawn-says-\w+", False,
     Outcome.PASSED, Stage.EXPECT, None),
    ("tiny-host-enoexec.log", "d61f6cc1b1c52afa", None, False, Outcome.LOAD_REFUSED, Stage.LOADER, "ENOEXEC"),
    ("tiny-host-multikernel-unsupported.log", "786e9bd5a2617aa9", None, False,
     Outcome.UNSUPPORTED_HOST, Stage.LOADER, None),
    # The probe printed the nonce, then the bundle's init hung: with an expect pattern the
    # deadline decides; without one the nonce alone passes.
    ("tiny-host-hung-spawn.log", "2f38d73203d4247b", "MKSPAWN-READY", True, Outcome.TIMEOUT,
     Stage.SPAWN_USERSPACE, None),
    ("tiny-host-hung-spawn.log", "2f38d73203d4247b", None, False, Outcome.PASSED, Stage.SPAWN_USERSPACE, None),
    ("sig-host-four-verdicts.log", "4898d3aa84adfd60", None, False, Outcome.PASSED, Stage.SPAWN_USERSPACE, None),
    # The same boot judged with another run's nonce: it proves nothing about this run.
    ("debian-host-minimal-spawn.log", "0000000000000000", None, False,
     Outcome.STOPPED_EARLY, Stage.SPAWN_KERNEL, None),
]


def read(name: str) -> list[str]:
    return (DATA / name).read_text(encoding="utf-8", errors="replace").splitlines()


@pytest.mark.parametrize(("name", "nonce", "expect", "timed_out", "outcome", "reached", "errno"), SAVED)
def test_saved_logs(name: str, nonce: str, expect: str | None, timed_out: bool, outcome: Outcome,
                    reached: Stage, errno: str | None) -> None:
    parser = parse_log(read(name), nonce, re.compile(expect) if expect else None)
    assert parser.outcome(timed_out=timed_out) is outcome
    assert parser.reached is reached
    assert (parser.errno.name if parser.errno else None) == errno


def test_stages_follow_the_boot_order_on_a_passing_log() -> None:
    parser = parse_log(read("debian-host-minimal-spawn.log"), "a119ec5bc1a595f7")
    assert list(parser.stages) == [Stage.HOST_KERNEL, Stage.LOADER, Stage.LOADED, Stage.EXEC,
                                   Stage.SPAWN_KERNEL, Stage.SPAWN_USERSPACE]
    assert parser.finished


def test_the_nonce_before_the_jump_does_not_count() -> None:
    # A host that printed the nonce itself (it carries the probe) proves nothing.
    parser = parse_log(["Linux version 6.12", "MKSPAWN-NONCE=abc", "MKSPAWN-LOADER-START mode=kexec"], "abc")
    assert Stage.SPAWN_USERSPACE not in parser.stages


def test_saved_errno_and_diagnosis_lines() -> None:
    enoexec = parse_log(read("tiny-host-enoexec.log"), "d61f6cc1b1c52afa")
    assert enoexec.errno is not None
    assert (enoexec.errno.number, enoexec.errno.kind, enoexec.errno.op) == (8, "format", "kexec_file_load")
    assert enoexec.errno.meaning.startswith("bad format")
    unsupported = parse_log(read("tiny-host-multikernel-unsupported.log"), "786e9bd5a2617aa9")
    assert unsupported.unsupported is not None
    assert unsupported.unsupported.startswith("host kernel lacks multikernel support: no 'multikernel' filesystem")


def test_saved_probe_verdicts_of_a_signature_enforcing_host() -> None:
    parser = parse_log(read("sig-host-four-verdicts.log"), "4898d3aa84adfd60")
    assert [(p.accepted, p.errno) for p in parser.probes] == [
        (False, "ENODATA"), (False, "EKEYREJECTED"), (False, "ENOKEY")]
    assert parser.errno is None  # probe refusals are not the main load's verdict


def test_load_failure_line_is_decoded() -> None:
    line = ("MKSPAWN-LOAD-FAIL op=kexec_file_load errno=EKEYREJECTED errno_num=129 class=signature "
            "detail=flags=0x0: signature failure: the signature does not match the image")
    parser = parse_log(["Linux version 6.12", "MKSPAWN-LOADER-START mode=kexec", line,
                        "MKSPAWN-LOADER-END rc=1"], "n")
    assert parser.outcome(timed_out=False) is Outcome.LOAD_REFUSED
    assert parser.errno is not None
    assert (parser.errno.name, parser.errno.number, parser.errno.kind) == ("EKEYREJECTED", 129, "signature")
    assert parser.errno.meaning.startswith("signature failure")
    assert parser.finished


@pytest.mark.parametrize(("lines", "outcome"), [
    ([], Outcome.NO_OUTPUT),
    (["Linux version 6.12", "[ 1.8] Kernel panic - not syncing: VFS: Unable to mount root fs"], Outcome.HOST_CRASHED),
    (["Linux version 6.12", "MKSPAWN-LOADER-START mode=kexec", "MKSPAWN-LOAD-OK kexec_loaded=1",
      "[ 3.0] kexec_core: Starting new kernel", "Linux version 6.12.117",
      "[ 0.9] Kernel panic - not syncing: No working init found."], Outcome.SPAWN_CRASHED),
    (["Linux version 6.12", "Fatal Python error: init_fs_encoding: failed to get the Python codec",
      "[ 1.8] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"], Outcome.LOADER_CRASHED),
    (["Linux version 6.12", "MKSPAWN-UNSUPPORTED host kernel lacks multikernel support: no fs"],
     Outcome.UNSUPPORTED_HOST),
])
def test_failure_shapes(lines: list[str], outcome: Outcome) -> None:
    assert parse_log(lines, "n").outcome(timed_out=False) is outcome


def test_timeout_versus_a_missed_expect() -> None:
    lines = ["Linux version 6.12", "MKSPAWN-LOADER-START", "MKSPAWN-LOAD-OK", "kexec_core: Starting new kernel",
             "Linux version 6.12.117", "MKSPAWN-NONCE=n", "MKSPAWN-READY"]
    parser = parse_log(lines, "n", re.compile("never"))
    assert parser.outcome(timed_out=True) is Outcome.TIMEOUT
    assert parser.outcome(timed_out=False) is Outcome.EXPECT_MISSED
    assert not parser.finished


def test_multikernel_markers_map_onto_the_same_stages() -> None:
    lines = ["Linux version 7.0.0-mk2", "MKSPAWN-LOADER-START mode=multikernel", "MKSPAWN-MK stage=mounted /sys/fs/mk",
             "MKSPAWN-MK stage=loaded status=loaded", "MKSPAWN-MK stage=started status=active",
             "MKSPAWN-MK stage=console Linux version 7.0.0-mk2", "MKSPAWN-MK stage=console MKSPAWN-NONCE=n"]
    parser = parse_log(lines, "n")
    assert parser.outcome(timed_out=False) is Outcome.PASSED
    assert list(parser.stages)[-3:] == [Stage.EXEC, Stage.SPAWN_KERNEL, Stage.SPAWN_USERSPACE]


def test_terminal_escapes_are_stripped() -> None:
    raw = "Probing EDD (edd=off to disable)... oc\x1b[?7l\x1b[2J[    0.000000] Linux version 6.12"
    assert "\x1b" not in clean(raw)
    parser = ConsoleParser(nonce=None)
    parser.feed(raw, 0.5)
    assert parser.stages == {Stage.HOST_KERNEL: 0.5}
