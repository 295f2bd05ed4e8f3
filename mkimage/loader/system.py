"""Every instance of a system on one multikernel host, in the system manifest's order.

One sequence serves `mkspawn load DIR` on an operator's host and the system mode of the
loader in a check's QEMU host: mount the multikernel filesystem (a stock kernel stops
here, whatever the profile), write the system's tree to ``device_tree`` once, then for
each spawn in order create its instance (mk2 and later: its overlay; v2: the one tree
already named every instance, multikernel-abi.md §7.1), load it with
KEXEC_MULTIKERNEL | KEXEC_MK_ID(id), and start it.  The instances stay running.  With a
ready marker (a check) the spawn's console is opened before the start and read until the
marker shows, so each spawn is judged on its own while the earlier ones keep running.

A spawn the kernel refuses is taken back (unloaded; its overlay rolled back) before the
error is raised; the spawns started before it keep running, and the report said which.
Stdlib only, like the rest of the loader.
"""

from __future__ import annotations

import errno
import os

from mkimage.loader import multikernel
from mkimage.loader.errnos import LoaderError

TYPE_CHECKING = False  # see multikernel.py: typing is not imported into the guest
if TYPE_CHECKING:
    from collections.abc import Callable

    from mkimage.loader.multikernel import Host, Profile

    # (instance, stage, detail); instance "" for the steps of the whole system
    SpawnReport = Callable[[str, str, str], None]


class SpawnRefused(LoaderError):
    """The kernel refused a step for one spawn of the system: ``instance`` names it."""

    def __init__(self, instance: str, e: LoaderError) -> None:
        super().__init__(e.op, e.errno, e.detail)
        self.instance = instance


class SystemSpawn:
    """One instance of a system: what to load into it and, mk2 on, the overlay creating it."""

    def __init__(self, *, name: str, mk_id: int, kernel: str, initrd: str | None, cmdline: str,
                 dtbo: bytes | None, ready_marker: str | None = None) -> None:
        self.name = name
        self.mk_id = mk_id
        self.kernel = kernel
        self.initrd = initrd
        self.cmdline = cmdline
        self.dtbo = dtbo
        self.ready_marker = ready_marker


def start_system(profile: Profile, tree: bytes, spawns: list[SystemSpawn], report: SpawnReport,
                 host: Host | None = None, *, timeout_s: float = 30.0) -> list[tuple[str, bool]]:
    """Apply ``tree`` once, then create, load and start each spawn in order.

    Returns each started spawn's name and whether it showed its ready marker within
    ``timeout_s`` (True when it has none).  ``host`` is the running kernel unless a test
    passes its stand-in."""
    host = host if host is not None else multikernel.LiveHost(profile.root)
    multikernel.ensure_mounted(host)
    report("", "mounted", host.root)
    report("", "baseline", "written" if multikernel.write_baseline(host, tree) else "already present")
    started: list[tuple[str, bool]] = []
    for spawn in spawns:
        try:
            tx = _create(host, profile, spawn, report)
            try:
                seen = _start_one(host, profile, spawn, report, timeout_s)
            except BaseException:
                if tx is not None:
                    multikernel.delete(host, tx)
                    report(spawn.name, "deleted", f"{tx} (started before it: "
                                                  f"{', '.join(n for n, _ in started) or 'none'})")
                raise
        except LoaderError as e:
            raise SpawnRefused(spawn.name, e) from None
        started.append((spawn.name, seen))
    return started


def _create(host: Host, profile: Profile, spawn: SystemSpawn, report: SpawnReport) -> str | None:
    """The spawn's instance: its overlay's transaction (mk2 on), or None on v2, where
    writing the tree created every instance."""
    if not profile.overlays:
        if not host.exists(f"instances/{spawn.name}"):
            raise LoaderError("instance", errno.ENOENT, f"the system tree created no instances/{spawn.name}")
        return None
    if spawn.dtbo is None:
        raise LoaderError("instance", errno.EINVAL, f"no overlay for {spawn.name} (profile {profile.name})")
    written = multikernel.overlay_instance_name(spawn.dtbo)
    if written != spawn.name:
        raise LoaderError("instance", errno.EINVAL, f"the overlay creates {written!r}, not {spawn.name!r}")
    tx = multikernel.apply_overlay(host, spawn.dtbo, spawn.name)
    report(spawn.name, "overlay", f"{tx} instance={spawn.name}")
    return tx


def _start_one(host: Host, profile: Profile, spawn: SystemSpawn, report: SpawnReport, timeout_s: float) -> bool:
    mk_id = multikernel.instance_id(host, spawn.name)
    if mk_id != spawn.mk_id:
        raise LoaderError("instance", errno.EINVAL, f"{spawn.name} has id {mk_id}, the system says {spawn.mk_id}")
    multikernel.load(host, spawn.kernel, spawn.initrd, spawn.cmdline, mk_id)
    console = None
    try:
        state = multikernel.wait_status(host, spawn.name, profile.loaded_state, 5.0)
        report(spawn.name, "loaded", f"id={mk_id} status={state}")
        if spawn.ready_marker is not None:
            console = multikernel.open_console(host, mk_id)
        multikernel.start(host, mk_id)
    except BaseException:
        if console is not None:
            os.close(console)
        if multikernel.status(host, spawn.name) != "active":
            multikernel.unload(host, mk_id)
        raise
    report(spawn.name, "started", f"id={mk_id} status={multikernel.wait_status(host, spawn.name, 'active', 5.0)}")
    if console is None or spawn.ready_marker is None:
        return True
    marker = spawn.ready_marker
    try:
        seen = multikernel.read_console(console, lambda line: marker in line, timeout_s,
                                        lambda line: report(spawn.name, "console", line))
    finally:
        os.close(console)
    report(spawn.name, "ready" if seen else "not-ready", f"within {timeout_s:g}s")
    return seen
