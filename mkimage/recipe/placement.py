"""Placing a CPU count on a pool of APIC ids, shared by the devicetree stage (one
recipe's instance) and the system loader (every instance of a host at once)."""

from __future__ import annotations

from collections.abc import Iterable


def place_cpus(pool: Iterable[int], count: int, threads: int) -> tuple[int, ...]:
    """``count`` APIC ids from ``pool``: whole cores first, lowest ids first, so SMT
    siblings stay together whenever the count allows."""
    free = sorted(pool)
    cores: dict[int, list[int]] = {}
    for cpu in free:
        cores.setdefault(cpu // threads, []).append(cpu)
    chosen: list[int] = []
    for members in cores.values():
        if len(members) == threads and len(chosen) + threads <= count:
            chosen.extend(members)
    for cpu in free:
        if len(chosen) == count:
            break
        if cpu not in chosen:
            chosen.append(cpu)
    return tuple(sorted(chosen))
