"""Wall and CPU time of one step, shared by the kernel benchmarks (bench/kernel.py,
bench/remote_cache.py).  CPU time (this process and its children) is the figure that
survives a busy machine; wall time is what a user waits."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timing:
    wall_s: float
    cpu_s: float  # user+sys of this process and its children


def _cpu() -> float:
    self_, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return self_.ru_utime + self_.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], object]) -> Timing:
    start, cpu = time.monotonic(), _cpu()
    fn()
    return Timing(time.monotonic() - start, _cpu() - cpu)
