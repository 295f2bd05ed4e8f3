"""`mkspawn doctor`: what this host can do, and what to install for the rest."""

from __future__ import annotations

from pathlib import Path

import click

from mkimage.cachecare import human
from mkimage.commands.options import echo_json, json_option, trust_option
from mkimage.doctor import Diagnosis, diagnose


@click.command("doctor")
@trust_option
@json_option
def doctor(trust_dir: Path | None, as_json: bool) -> None:
    """Check the host tools mkspawn runs (with versions), KVM, the cache and the trust
    store, and name the Debian package of each missing piece.  Nothing is built or booted."""
    report = diagnose(trust_dir=trust_dir)
    if as_json:
        echo_json(report.to_json())
        return
    click.echo(render(report))


def render(report: Diagnosis) -> str:
    lines = ["tools:"]
    width = max(len(t.name) for t in report.tools)
    for t in report.tools:
        if t.usable:
            lines.append(f"  ok       {t.name:<{width}}  {t.version:<20}  {t.purpose}")
        else:
            state = "missing " if t.problem == "not found" else "unusable"
            fix = f"; install {t.package}" if t.package else ""
            lines.append(f"  {state} {t.name:<{width}}  {t.problem}{fix} ({t.purpose})")
    kvm = report.kvm
    note = {"absent": "QEMU boots run under TCG (slower)",
            "present, unproven": "only a real boot proves it works"}.get(kvm.status, "add this user to the kvm group")
    lines.append(f"kvm:     {kvm.device} {kvm.status} ({note})")
    cache = report.cache
    lines.append(f"cache:   {cache.root}: " + (f"{human(cache.bytes)} in {cache.files} files (see mkspawn cache status)"
                                               if cache.exists else "empty (nothing built yet)"))
    trust = report.trust
    if trust.problem:
        lines.append(f"trust:   {trust.directory}: {trust.problem}")
    elif not trust.exists:
        lines.append(f"trust:   {trust.directory}: absent (verify then needs --trust DIR)")
    else:
        lines.append(f"trust:   {trust.directory}: {len(trust.keys)} key{'' if len(trust.keys) == 1 else 's'}")
        lines += [f"           {key}" for key in trust.keys]
    if report.missing_packages:
        lines.append(f"install: apt-get install {' '.join(report.missing_packages)}")
    else:
        lines.append("all tools present and usable")
    return "\n".join(lines)


command = doctor
