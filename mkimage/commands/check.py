"""`mkspawn check`: the static loader contract (--static), or a real boot under QEMU."""

from __future__ import annotations

import time
from pathlib import Path

import click

from mkimage.bundle.static_check import StaticCheck, static_check
from mkimage.bundle.system_manifest import is_system_target
from mkimage.bundle.verify import verify_bundle
from mkimage.commands.options import echo_json, input_file, json_option, load_trust, state_option, trust_option
from mkimage.context import default_cache_root
from mkimage.errors import BootCheckError, UsageError, VerifyError
from mkimage.qemu.check import (
    DEFAULT_TIMEOUT_S,
    CheckOptions,
    CheckResult,
    Mode,
    check_bundle,
    resolve_host_kernel,
)
from mkimage.recipe.load import load_recipe
from mkimage.recipe.model import AbiProfile

PROFILES = [p.value for p in AbiProfile]


@click.command("check")
@click.argument("target", type=input_file)
@click.option("--static", "static", is_flag=True,
              help="Check the loader contract without booting (header, flags, ELF notes).")
@click.option("--profile", type=click.Choice(PROFILES),
              help="ABI profile [default: the bundle's, else none; multikernel mode: else mk2].")
@click.option("--arch", type=click.Choice(["x86_64", "arm64"]), help="--static: target arch [default: the bundle's].")
@click.option("--cmdline", default=None, help="--static: command line to check against the image's limit.")
@click.option("--mode", type=click.Choice([m.value for m in Mode]), default=Mode.KEXEC.value, show_default=True,
              help="Boot: plain kexec, or the multikernel protocol.")
@click.option("--host-kernel", type=click.Path(path_type=Path, dir_okay=False),
              help="Boot: host kernel to load the spawn from (e.g. a Debian vmlinuz).")
@click.option("--host-recipe", type=click.Path(path_type=Path, dir_okay=False),
              help="Boot: recipe whose kernel is the host, built and cached [default: kexec mode boots Debian's "
                   "prebuilt cloud kernel, fetched once with apt-get download; else builtin:recipes/qemu-host.toml].")
@click.option("--host-set", "host_overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Boot: override a host recipe value, e.g. kernel.trusted_keys=ca.crt for recipes/sig-host.toml.")
@click.option("--recipe", "recipe", type=click.Path(path_type=Path, dir_okay=False),
              help="Boot: take [check] settings (expect, timeout_s, host) from this recipe.")
@click.option("--expect", default=None, metavar="REGEX", help="Boot: the spawn's console must match this.")
@click.option("--timeout", "timeout_s", type=float, default=None, help="Boot: deadline in seconds [default: 90].")
@trust_option
@state_option
@click.option("--log-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Boot: keep the console log here [default: a new temp dir].")
@json_option
def check(target: Path, static: bool, profile: str | None, arch: str | None, cmdline: str | None, mode: str,
          host_kernel: Path | None, host_recipe: Path | None, host_overrides: tuple[str, ...],
          recipe: Path | None, expect: str | None,
          timeout_s: float | None, trust_dir: Path | None, state_file: Path | None, log_dir: Path | None,
          as_json: bool) -> None:
    """Check a bundle: --static checks the kernel's loader contract; otherwise verify the
    bundle, boot a host kernel in QEMU and have mkspawn's loader kexec the spawn (exit 4
    if the boot check fails).

    A system directory (or its system.json) is verified whole before anything boots,
    then every spawn is checked on a QEMU host of its own (docs/systems.md)."""
    if static:
        if is_system_target(target):
            raise UsageError(f"{target}: --static checks one bundle or image; check a system's bundles "
                             "one by one, or boot the whole system without --static", code="usage")
        _static(target, profile, arch, cmdline, as_json)
        return
    if host_kernel is not None and host_recipe is not None:
        raise UsageError("give --host-kernel or --host-recipe, not both", code="usage")
    settings = load_recipe(recipe).check if recipe is not None else None
    if settings is not None:
        expect = expect if expect is not None else (settings.expect or None)
        timeout_s = timeout_s if timeout_s is not None else float(settings.timeout_s)
        if host_kernel is None and host_recipe is None:
            host_kernel, host_recipe = settings.host_kernel, settings.host_recipe
    if host_overrides and host_kernel is not None:
        raise UsageError("--host-set applies to a host recipe, not to --host-kernel", code="usage")
    # The cheap refusal first: a host kernel build takes minutes.
    started = time.monotonic()
    system = is_system_target(target)
    if system:
        from mkimage.commands import system as system_command
        from mkimage.system import verify_system

        checked = verify_system(target, load_trust(trust_dir), state_file=state_file)
    else:
        report = verify_bundle(target, load_trust(trust_dir), state_file=state_file)
    verify_s = time.monotonic() - started
    root = default_cache_root()
    host = resolve_host_kernel(host_kernel, host_recipe, cache_root=root, overrides=host_overrides, mode=Mode(mode))
    options = CheckOptions(mode=Mode(mode), profile=AbiProfile(profile) if profile else None,
                           timeout_s=timeout_s or DEFAULT_TIMEOUT_S, expect=expect, log_dir=log_dir)
    if system:
        system_command.check(checked, host, options, cache_root=root, verify_s=verify_s, as_json=as_json)
        return
    result = check_bundle(target, report, host, options, cache_root=root, verify_s=verify_s)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(render_boot(result), nl=False)
    if not result.ok:
        raise BootCheckError(f"{target}: {result.summary()}", code=f"check-{result.outcome}")


def render_boot(result: CheckResult) -> str:
    lines = [f"{result.bundle}: {result.mode} check on host {result.host_kernel.name}: {result.outcome}"]
    for stage, t in result.stages:
        lines.append(f"  reached {stage:<16} " + ("" if t is None else f"at {t:6.2f}s"))
    lines.append(f"  nonce {result.nonce}: {'seen' if result.nonce_seen else 'not seen'}")
    if result.errno is not None:
        e = result.errno
        lines.append(f"  {e.op}: {e.name} ({e.number}), {e.kind}: {e.meaning}")
    if result.unsupported:
        lines.append(f"  {result.unsupported}")
    if not result.ok:
        lines.append(f"  last {len(result.console_tail)} console lines ({result.console_log}):")
        lines += [f"    | {line}" for line in result.console_tail]
    return "\n".join(lines) + "\n"


def _static(target: Path, profile: str | None, arch: str | None, cmdline: str | None, as_json: bool) -> None:
    result = static_check(target, profile=profile, arch=arch, cmdline=cmdline)
    if as_json:
        echo_json(result.to_dict())
    else:
        click.echo(render(result), nl=False)
    if not result.report.ok:
        failed = ", ".join(str(r.name) for r in result.report.failures)
        raise VerifyError(f"{target}: fails the {result.report.abi_profile} loader contract: {failed}",
                          code="contract-failed")


def render(result: StaticCheck) -> str:
    r = result.report
    what = f"{result.target}" + (f" [{result.component}]" if result.component else "")
    lines = [f"{what}: {r.kind}, {r.arch}, profile {r.abi_profile}, release {result.release or 'unknown'}"]
    for rule in r.rules:
        lines.append(f"  {'pass' if rule.passed else 'FAIL'}  {rule.name:<20} {rule.detail}")
    lines.append(f"  embedded config: {'yes' if result.config_found else 'no'} ({result.config_reason})")
    return "\n".join(lines) + "\n"


command = check
