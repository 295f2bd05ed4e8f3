"""Entry point of the loader: ``python -m mkimage.loader MODE [options]``.

This is the one module of the loader that prints: each step becomes one
``MKSPAWN-…`` console line, the protocol the QEMU check parses (mkimage/qemu/console.py)
and an operator reads.  Run as PID 1 in the check's host initramfs (``--as-init``, or
no arguments: they are then read from /mkspawn/loader.args, one per line) it also
mounts /proc, /sys and /dev first and restarts the machine whenever it is done, so
QEMU (started with -no-reboot) exits on every path.

Options are parsed by hand: argparse would pull a dozen more modules into the guest.
"""

from __future__ import annotations

import os
import sys

from mkimage.loader import kexec, multikernel, syscalls, system
from mkimage.loader.errnos import LoaderError, UnsupportedHost

ARGS_FILE = "/mkspawn/loader.args"
USAGE = """usage: python -m mkimage.loader kexec|multikernel --kernel PATH [--initrd PATH]
       [--cmdline TEXT | --cmdline-file PATH] [--no-exec] [--probe PATH]... [--as-init]
       multikernel only: [--profile v2|mk2|mk-master] [--dtb PATH] [--dtbo PATH]
       [--name NAME] [--id N] [--ready MARKER] [--timeout S]
   or: python -m mkimage.loader system --profile v2|mk2|mk-master --tree PATH
       --spawn DIR... [--timeout S] [--as-init]
       each DIR: kernel, cmdline, instance (name, id, ready marker: one a line),
       optional initrd and dtbo"""
MODES = ("kexec", "multikernel", "system")
FLAGS = {"--no-exec", "--as-init"}
MULTI = {"--probe", "--spawn"}
VALUED = {"--kernel", "--initrd", "--cmdline", "--cmdline-file", "--profile", "--dtb", "--dtbo",
          "--name", "--id", "--ready", "--timeout", "--tree"}
# A line about one spawn of a system starts with this and its name, then the usual marker
# (mkimage/qemu/console.py SPAWN_TAG, which the check parses).
SPAWN_TAG = "MKSPAWN-SPAWN="

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNSUPPORTED = 0, 1, 2, 3


def say(marker: str, text: str = "") -> None:
    print(f"MKSPAWN-{marker}" + (f" {text}" if text else ""), flush=True)


def fail_line(e: LoaderError) -> str:
    return f"op={e.op} errno={e.name} errno_num={e.errno} class={e.kind}" + \
        (f" detail={e.detail.replace(' ', '_')}" if e.detail else "") + f": {e.meaning}"


class Usage(Exception):
    pass


def parse(argv: list[str]) -> tuple[str, dict[str, str], dict[str, list[str]], set[str]]:
    if not argv or argv[0] not in MODES:
        raise Usage("first argument must be the mode: kexec, multikernel or system")
    values: dict[str, str] = {}
    lists: dict[str, list[str]] = {name: [] for name in MULTI}
    flags: set[str] = set()
    rest = argv[1:]
    while rest:
        opt = rest.pop(0)
        if opt in FLAGS:
            flags.add(opt)
        elif opt in VALUED or opt in MULTI:
            if not rest:
                raise Usage(f"{opt} needs a value")
            if opt in MULTI:
                lists[opt].append(rest.pop(0))
            else:
                values[opt] = rest.pop(0)
        else:
            raise Usage(f"unknown option {opt}")
    required = ("--profile", "--tree") if argv[0] == "system" else ("--kernel",)
    if missing := [opt for opt in required if opt not in values]:
        raise Usage(f"{missing[0]} is required")
    return argv[0], values, lists, flags


def cmdline_of(values: dict[str, str]) -> str:
    if "--cmdline-file" in values:
        with open(values["--cmdline-file"], "rb") as f:
            return f.read().decode("utf-8").strip()
    return values.get("--cmdline", "")


def probe(path: str, initrd: str | None, cmdline: str) -> None:
    """Load, report and unload: the kernel's verdict on an image, without booting it."""
    try:
        kexec.load_file(path, initrd, cmdline)
    except LoaderError as e:
        say("PROBE", f"path={path} result=refused {fail_line(e)}")
        return
    say("PROBE", f"path={path} result=accepted kexec_loaded={kexec.kexec_loaded()}")
    kexec.unload()


def run_kexec(values: dict[str, str], lists: dict[str, list[str]], flags: set[str]) -> int:
    initrd = values.get("--initrd")
    cmdline = cmdline_of(values)
    for path in lists["--probe"]:
        probe(path, initrd, cmdline)
    try:
        kexec.load_file(values["--kernel"], initrd, cmdline)
    except LoaderError as e:
        say("LOAD-FAIL", fail_line(e))
        return EXIT_REFUSED
    loaded = kexec.kexec_loaded()
    if loaded != 1:
        say("LOAD-FAIL", f"op=kexec_loaded errno=none errno_num=0 class=other: "
                         f"kexec_file_load returned 0 but /sys/kernel/kexec_loaded is {loaded}")
        return EXIT_REFUSED
    say("LOAD-OK", "kexec_loaded=1")
    if "--no-exec" in flags:
        return EXIT_OK
    say("EXEC")
    try:
        kexec.execute()
    except LoaderError as e:
        say("EXEC-FAIL", fail_line(e))
    return EXIT_REFUSED


def read_optional(values: dict[str, str], key: str) -> bytes | None:
    if key not in values:
        return None
    with open(values[key], "rb") as f:
        return f.read()


def run_multikernel(values: dict[str, str], flags: set[str]) -> int:
    name = values.get("--profile", "mk2")
    if name not in multikernel.PROFILES:
        raise Usage(f"unknown profile {name}; known: {', '.join(sorted(multikernel.PROFILES))}")
    plan = multikernel.Plan(
        profile=multikernel.PROFILES[name], kernel=values["--kernel"], initrd=values.get("--initrd"),
        cmdline=cmdline_of(values), dtb=read_optional(values, "--dtb"), dtbo=read_optional(values, "--dtbo"),
        name=values.get("--name"), mk_id=int(values["--id"]) if "--id" in values else None,
        ready_marker=values.get("--ready", "MKSPAWN-READY"), timeout_s=float(values.get("--timeout", "30")))
    try:
        seen = multikernel.run_instance(plan, lambda stage, detail: say("MK", f"stage={stage} {detail}"))
    except UnsupportedHost as e:
        say("UNSUPPORTED", str(e))
        return EXIT_UNSUPPORTED
    except LoaderError as e:
        say("LOAD-FAIL", fail_line(e))
        return EXIT_REFUSED
    say("MK-DONE", f"ready={'yes' if seen else 'no'}")
    return EXIT_OK if seen else EXIT_REFUSED


def read_spawn(directory: str) -> system.SystemSpawn:
    """A spawn staged by the check (mkimage/qemu/hostfs.py stage_system)."""
    def path(name: str) -> str:
        return os.path.join(directory, name)

    with open(path("instance"), "rb") as f:
        name, mk_id, ready = (f.read().decode("utf-8").splitlines() + ["", "", ""])[:3]
    dtbo = None
    if os.path.exists(path("dtbo")):
        with open(path("dtbo"), "rb") as f:
            dtbo = f.read()
    return system.SystemSpawn(name=name, mk_id=int(mk_id), kernel=path("kernel"),
                              initrd=path("initrd") if os.path.exists(path("initrd")) else None,
                              cmdline=cmdline_of({"--cmdline-file": path("cmdline")}), dtbo=dtbo,
                              ready_marker=ready or None)


def spawn_say(instance: str, stage: str, detail: str) -> None:
    line = f"MKSPAWN-MK stage={stage}" + (f" {detail}" if detail else "")
    print(f"{SPAWN_TAG}{instance} {line}" if instance else line, flush=True)


def run_system(values: dict[str, str], lists: dict[str, list[str]], host: multikernel.Host | None = None) -> int:
    """Every spawn of a system on this host, in order (mkimage/loader/system.py); ``host``
    is the running kernel unless a test passes its stand-in."""
    name = values["--profile"]
    if name not in multikernel.PROFILES:
        raise Usage(f"unknown profile {name}; known: {', '.join(sorted(multikernel.PROFILES))}")
    with open(values["--tree"], "rb") as f:
        tree = f.read()
    spawns = [read_spawn(d) for d in lists["--spawn"]]
    try:
        started = system.start_system(multikernel.PROFILES[name], tree, spawns, spawn_say, host,
                                      timeout_s=float(values.get("--timeout", "30")))
    except UnsupportedHost as e:
        say("UNSUPPORTED", str(e))
        return EXIT_UNSUPPORTED
    except system.SpawnRefused as e:
        print(f"{SPAWN_TAG}{e.instance} MKSPAWN-LOAD-FAIL {fail_line(e)}", flush=True)
        return EXIT_REFUSED
    except LoaderError as e:  # the tree itself: every spawn failed with it
        say("LOAD-FAIL", fail_line(e))
        return EXIT_REFUSED
    say("MK-DONE", "ready=" + ",".join(f"{n}:{'yes' if seen else 'no'}" for n, seen in started))
    return EXIT_OK if all(seen for _, seen in started) else EXIT_REFUSED


def mount_early() -> None:
    for source, target, fstype in (("proc", "/proc", "proc"), ("sysfs", "/sys", "sysfs"),
                                   ("devtmpfs", "/dev", "devtmpfs")):
        os.makedirs(target, exist_ok=True)
        try:
            syscalls.mount(source, target, fstype, syscalls.MS_NOSUID)
        except LoaderError as e:
            say("WARN", f"mount {target}: {e.name}")


def main(argv: list[str]) -> int:
    as_init = os.getpid() == 1 and not argv
    if as_init:
        with open(ARGS_FILE, "rb") as f:
            argv = [line for line in f.read().decode("utf-8").splitlines() if line]
    try:
        mode, values, lists, flags = parse(argv)
    except Usage as e:
        print(f"{e}\n{USAGE}", file=sys.stderr)
        return EXIT_USAGE
    as_init = as_init or "--as-init" in flags
    if as_init:
        mount_early()
    say("LOADER-START", f"mode={mode} pid={os.getpid()} "
        + (f"spawns={len(lists['--spawn'])}" if mode == "system" else f"kernel={values['--kernel']}"))
    try:
        if mode == "system":
            rc = run_system(values, lists)
        else:
            rc = run_kexec(values, lists, flags) if mode == "kexec" else run_multikernel(values, flags)
    except Usage as e:
        print(f"{e}\n{USAGE}", file=sys.stderr)
        rc = EXIT_USAGE
    say("LOADER-END", f"rc={rc}")
    if as_init:
        # PID 1 must not exit (that panics); restart, which QEMU's -no-reboot turns into exit.
        syscalls.sync()
        syscalls.reboot(syscalls.LINUX_REBOOT_CMD_RESTART)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
