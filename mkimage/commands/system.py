"""The system side of `mkspawn build|verify|inspect`: a system file (detected by its
top-level [system] table) builds a directory; a directory or system.json verifies,
checks and loads as a system.  The verbs in bundle.py hand over here, so there is one verb per action."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from mkimage.commands.options import echo_json
from mkimage.errors import BootCheckError, UsageError
from mkimage.recipe.system import load_system as load_system_file
from mkimage.signing.keys import PrivateKey
from mkimage.signing.trust import TrustStore
from mkimage.system import (
    SystemCheck,
    SystemReport,
    build_system,
    check_system,
    inspect_system,
    load_system,
    render_system,
    summary,
    verify_system,
)

if TYPE_CHECKING:  # check and load import the QEMU and loader side when they run; a build needs none
    from mkimage.qemu.check import CheckOptions, HostKernel
    from mkimage.recipe.userconfig import BuildSettings


def build(system_file: Path, out: Path, keys: tuple[Path, ...],
          load_keys: Callable[[tuple[Path, ...]], list[PrivateKey]],
          *, overrides: tuple[str, ...], strict: bool, jobs: int | None, as_json: bool,
          farm: BuildSettings | None = None) -> None:
    """Signed by --key, else by the [system] key: the system manifest and every bundle."""
    if overrides:
        raise UsageError("--set applies to recipes; a system file gives each spawn's instance itself",
                         code="usage")
    system = load_system_file(system_file, strict=strict)
    if not keys and system.meta.key is not None:
        keys = (Path(system.meta.key),)
    result = build_system(system, out, load_keys(keys), jobs=jobs, farm=farm)
    if as_json:
        echo_json(summary(result))
        return
    signed = ", ".join(k[:16] + "…" for k in result.signed_by) or "unsigned"
    click.echo(f"{out}: system {result.manifest.name} {result.manifest.version}, "
               f"{len(result.manifest.spawns)} spawns, manifest sha256 {result.manifest_sha256}, {signed}")


def verify(target: Path, trust: TrustStore, state_file: Path | None, as_json: bool) -> None:
    report = verify_system(target, trust, state_file=state_file)
    if as_json:
        echo_json({"ok": True, **report.to_dict()})
        return
    keys = ", ".join(k[:16] + "…" for k in report.trusted_by)
    m = report.manifest
    click.echo(f"{target}: OK: system {m.name} {m.version}, {len(m.spawns)} bundles verified, signed by {keys}")


def inspect(target: Path, trust: TrustStore, as_json: bool) -> None:
    report = inspect_system(target, trust)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(render_system(report), nl=False)


def load(target: Path, trust: TrustStore, state_file: Path | None) -> None:
    """Verify, then apply the system's tree and start every instance in order on this host."""
    from mkimage.loader.errnos import LoaderError, UnsupportedHost
    from mkimage.loader.system import SpawnRefused

    def report(instance: str, stage: str, detail: str) -> None:
        click.echo(f"{stage}: {instance} {detail}" if instance else f"{stage}: {detail}")

    try:
        started = load_system(target, trust, report, state_file=state_file)
    except UnsupportedHost as e:
        raise BootCheckError(f"{target}: {e}", code="unsupported-host") from None
    except SpawnRefused as e:
        raise BootCheckError(f"{target}: instance {e.instance}: {e.line()}", code=f"load-{e.name.lower()}") from None
    except LoaderError as e:
        raise BootCheckError(f"{target}: {e.line()}", code=f"load-{e.name.lower()}") from None
    click.echo(f"{target}: {len(started)} instances started: {', '.join(started)}")


def check(checked: SystemReport, host: HostKernel, options: CheckOptions, *, cache_root: Path, verify_s: float,
          as_json: bool) -> None:
    """Boot-check every spawn of the verified system; exit 4 naming each that failed."""
    result = check_system(checked, host, options, cache_root=cache_root, verify_s=verify_s)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(render_system_check(result), nl=False)
    if result.ok:
        return
    # A spawn is left unloaded only after the kernel refused an earlier one.
    first = next(s.result for s in result.failed if s.result is not None)
    failed = ", ".join(s.instance for s in result.failed)
    raise BootCheckError(f"{result.directory}: {len(result.failed)} of {len(result.spawns)} spawns failed the "
                         f"{result.mode} check ({failed}): {first.summary()}", code=f"check-{first.outcome}")


def render_system_check(result: SystemCheck) -> str:
    hosts = "one QEMU host each" if str(result.mode) == "kexec" else "all on one QEMU host, in load order"
    rows = [f"{result.directory}: {result.mode} check of {len(result.spawns)} spawns, {hosts}",
            f"  {'INSTANCE':<14} {'OUTCOME':<18} {'REACHED':<16} {'NONCE':<9} {'BOOT':>7}  CONSOLE LOG"]
    for s in result.spawns:
        r = s.result
        if r is None:
            rows.append(f"  {s.instance:<14} {'not loaded':<18} {'-':<16} {'-':<9} {'-':>7}  "
                        "(the loader stopped at an earlier spawn, shown above)")
            continue
        boot = f"{r.timings_s.get('boot', 0):.1f}s"
        rows.append(f"  {s.instance:<14} {str(r.outcome):<18} {str(r.reached or '-'):<16} "
                    f"{'seen' if r.nonce_seen else 'missing':<9} {boot:>7}  {r.console_log}")
    failed = [s for s in result.failed if s.result is not None]
    summaries = {s.result.summary() for s in failed if s.result is not None}
    if len(failed) == len(result.spawns) > 1 and len(summaries) == 1:
        rows.append(f"  every spawn: {summaries.pop()}")  # one host's verdict, e.g. no multikernel support
    else:
        rows.extend(f"  {s.instance}: {s.result.summary()}" for s in failed if s.result is not None)
    return "\n".join(rows) + "\n"
