"""`mkspawn doctor`: what this host can do, and what to install for the rest."""

from __future__ import annotations

from pathlib import Path

import click

from mkimage.cachecare import human
from mkimage.commands.options import echo_json, json_option, trust_option
from mkimage.doctor import Diagnosis, FarmReport, diagnose


@click.command("doctor")
@trust_option
@click.option("--config", "config_file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Build configuration file [default: $MKSPAWN_CONFIG, else ~/.config/mkspawn/config.toml].")
@json_option
def doctor(trust_dir: Path | None, config_file: Path | None, as_json: bool) -> None:
    """Check the host tools mkspawn runs (with versions), KVM, the cache, the trust store
    and the build farm of config.toml (remote cache, distcc hosts), and name the Debian
    package of each missing piece.  Nothing is built or booted."""
    report = diagnose(trust_dir=trust_dir, config_file=config_file)
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
    lines += _farm_lines(report.farm)
    if report.missing_packages:
        lines.append(f"install: apt-get install {' '.join(report.missing_packages)}")
    else:
        lines.append("all tools present and usable")
    return "\n".join(lines)


def _farm_lines(farm: FarmReport) -> list[str]:
    if farm.problem:
        return [f"build:   {farm.problem}"]
    if farm.remote_cache is None and not farm.hosts:
        where = farm.config if farm.exists else f"no {farm.config}"
        return [f"build:   local (ccache on this machine only; {where})"]
    lines = [f"build:   {farm.config}"]
    if farm.remote_cache is not None:
        state = "reachable" if farm.remote_problem is None else f"unreachable ({farm.remote_problem})"
        c = farm.ccache_remote
        lines.append(f"  remote cache {farm.remote_cache}: {state}; so far {c.get('remote_storage_hit', 0)} hits, "
                     f"{c.get('remote_storage_miss', 0)} misses, "
                     f"{c.get('remote_storage_error', 0) + c.get('remote_storage_timeout', 0)} errors")
    if farm.hosts:
        lines.append("  distcc " + ", ".join(f"{h}: {'reachable' if p is None else f'unreachable ({p})'}"
                                              for h, p in farm.hosts))
    return lines


command = doctor
