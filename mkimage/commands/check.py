"""`mkspawn check --static`."""

from __future__ import annotations

from pathlib import Path

import click

from mkimage.bundle.static_check import StaticCheck, static_check
from mkimage.commands.options import echo_json, json_option
from mkimage.errors import UsageError, VerifyError


@click.command("check")
@click.argument("target", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--static", "static", is_flag=True, required=True,
              help="Check the loader contract without booting (header, flags, ELF notes).")
@click.option("--profile", type=click.Choice(["none", "v2", "mk2", "mk-master"]),
              help="ABI profile for a bare image [default: the bundle's, else none].")
@click.option("--arch", type=click.Choice(["x86_64", "arm64"]), help="Target arch [default: the bundle's, else x86_64].")
@click.option("--cmdline", default=None, help="Command line to check against the image's limit.")
@json_option
def check(target: Path, static: bool, profile: str | None, arch: str | None, cmdline: str | None,
          as_json: bool) -> None:
    """Check that a bundle's kernel (or a bare image) meets its kexec loader's contract."""
    if not static:
        raise UsageError("only --static is available in this version", code="usage")
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
