"""The multikernel check of a whole system: every spawn on ONE QEMU host.

The host initramfs carries the system's tree and every spawn (hostfs.stage_system); the
loader's system mode (mkimage/loader/system.py, the sequence `mkspawn load DIR` runs)
mounts the multikernel filesystem, writes the tree, then creates, loads and starts each
instance in order, reading each spawn's console until its own nonce.  Lines about one
spawn are tagged ``MKSPAWN-SPAWN=<name>``; each spawn is judged by the single-bundle
console parser on the host's own lines plus its tagged ones, so a stock host's "no
multikernel support" is every spawn's diagnosis, and one spawn's panic is its own.
"""

from __future__ import annotations

import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mkimage.qemu import hostfs
from mkimage.qemu.check import NONCE_BYTES, CheckOptions, CheckResult, HostKernel, Mode
from mkimage.qemu.console import SPAWN_TAG, ConsoleParser, Stage, clean, parse_log
from mkimage.qemu.harness import BootRequest, boot
from mkimage.recipe.model import AbiProfile


@dataclass
class HostConsoleParser(ConsoleParser):
    """The live verdict of a system boot: the host's own lines only (loader end, no
    multikernel support, a host panic); a spawn's lines, its panic included, are judged
    per spawn afterwards."""

    def feed(self, line: str, t: float | None = None) -> bool:
        if clean(line).startswith(SPAWN_TAG):
            self.lines += 1
            return self.finished
        return super().feed(line, t)


def lines_of(console: Sequence[str], instance: str) -> tuple[list[str], bool]:
    """The host's lines and ``instance``'s own (untagged), other spawns' lines left out;
    and whether there was any line about ``instance`` (the loader reached it)."""
    tag = f"{SPAWN_TAG}{instance} "
    kept, reached = [], False
    for line in console:
        shown = clean(line)
        if shown.startswith(tag):
            kept.append(shown.removeprefix(tag))
            reached = True
        elif not shown.startswith(SPAWN_TAG):
            kept.append(line)
    return kept, reached


def check_system_payloads(tree: Path, spawns: Sequence[tuple[str, int, hostfs.SpawnPayload]], host_kernel: HostKernel,
                          options: CheckOptions, *, cache_root: Path, profile: AbiProfile,
                          timings: dict[str, float] | None = None) -> list[CheckResult | None]:
    """Boot ``host_kernel`` once and have the loader start every spawn in order; one result per
    spawn, None for a spawn never reached because an earlier one was refused."""
    assert options.mode is Mode.MULTIKERNEL
    timings = dict(timings or {})
    started = time.monotonic()
    staged = [hostfs.SystemSpawnPayload(name, mk_id, payload, secrets.token_hex(NONCE_BYTES))
              for name, mk_id, payload in spawns]
    log_dir = options.log_dir or Path(tempfile.mkdtemp(prefix="mkspawn-check-system-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="work-", dir=log_dir))
    # Each spawn may take the whole per-spawn deadline, one after another.
    deadline = options.timeout_s * len(staged)
    try:
        runtime = hostfs.python_runtime(cache_root / "check")
        chosen = options.profile or profile
        loader_args = ["system", "--profile", str(chosen), "--timeout", f"{options.timeout_s:g}"]
        hostfs.stage_system(tree, staged, loader_args, work / "payload", console=options.mode.spawn_console)
        initrd = hostfs.build_host_initramfs(runtime, work / "payload", work / "host-initrd.cpio")
        timings["prepare"] = time.monotonic() - started
        result = boot(BootRequest(options.params or options.mode.params, host_kernel.image, initrd, deadline,
                                  log_dir / "console.log", None, parser=HostConsoleParser(nonce=None)))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    timings["boot"] = result.streamed.elapsed_s
    timings["deadline"] = deadline
    console = result.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    expect = re.compile(options.expect) if options.expect else None
    host = result.parser
    host_verdict = host.unsupported is not None or host.errno is not None or host.panic is not None \
        or host.traceback
    results: list[CheckResult | None] = []
    for spawn in staged:
        own, reached = lines_of(console, spawn.name)
        if not reached and not host_verdict and host.loader_ended:
            results.append(None)  # the loader stopped before this spawn: an earlier one was refused
            continue
        parser = parse_log(own, spawn.nonce, expect)
        stages = tuple(sorted(parser.stages.items(), key=lambda item: list(Stage).index(item[0])))
        results.append(CheckResult(
            mode=options.mode, host_kernel=host_kernel.image,
            outcome=parser.outcome(timed_out=result.streamed.timed_out), stages=stages, errno=parser.errno,
            unsupported=parser.unsupported, panic=parser.panic,
            nonce=spawn.nonce, nonce_seen=Stage.SPAWN_USERSPACE in parser.stages, expect=options.expect,
            probes=(), console_tail=result.tail, console_log=result.log_path, timings_s=timings))
    return results
