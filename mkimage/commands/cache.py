"""`mkspawn cache status|prune`: what the build cache holds, and freeing it."""

from __future__ import annotations

import time

import click

from mkimage.cachecare import IN_USE_GRACE_S, CacheStatus, PruneResult, human, parse_size, prune, status
from mkimage.commands.options import echo_json, json_option
from mkimage.context import default_cache_root


@click.group("cache")
def cache() -> None:
    """Show the build cache's use by kind, or prune what was used least recently.

    The cache is $XDG_CACHE_HOME/mkspawn (else ~/.cache/mkspawn)."""


@cache.command("status")
@json_option
def status_command(as_json: bool) -> None:
    """Entries, size and last use of each kind of cache entry."""
    report = status(default_cache_root())
    if as_json:
        echo_json(report.to_json())
        return
    click.echo(render_status(report))


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t)) if t is not None else "-"


def render_status(report: CacheStatus) -> str:
    lines = [f"{report.root}: {human(report.total)}", f"  {'kind':<16}{'entries':>8}{'size':>12}  last use"]
    for k in report.kinds:
        if k.entries:
            lines.append(f"  {k.kind:<16}{k.entries:>8}{human(k.bytes):>12}  {_when(k.last_use)}")
    lines.append(f"  {'ccache':<16}{'':>8}{human(report.ccache_bytes):>12}  (kept to ccache's own limit, ccache -M)")
    lines.append(f"  {'other':<16}{'':>8}{human(report.other_bytes):>12}  (memos, locks, test assets)")
    return "\n".join(lines)


@cache.command("prune")
@click.option("--keep-days", type=click.FloatRange(min=0), default=None, metavar="N",
              help="Remove entries not used in the last N days.")
@click.option("--max-size", default=None, metavar="SIZE",
              help="Then remove the least recently used entries until the rest fit in SIZE (e.g. 20G, 500M).")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed.")
@json_option
def prune_command(keep_days: float | None, max_size: str | None, dry_run: bool, as_json: bool) -> None:
    """Remove least recently used cache entries beyond the limits, never one in use.

    Without a limit only leftovers of interrupted builds are removed.  An entry whose
    lock a build holds, or that was used in the last ten minutes, is kept."""
    max_bytes = parse_size(max_size) if max_size is not None else None
    root = default_cache_root()
    result = prune(root, keep_days=keep_days, max_bytes=max_bytes, dry_run=dry_run)
    if as_json:
        echo_json({**result.to_json(root), "dry_run": dry_run})
        return
    click.echo(render_prune(result, dry_run))


def render_prune(result: PruneResult, dry_run: bool) -> str:
    verb = "would remove" if dry_run else "removed"
    lines = [f"{verb} {e.kind} {e.path.name[:16]} ({human(e.bytes)}, last used {_when(e.last_use)})"
             for e in result.removed]
    if result.in_use:
        kinds = sorted({e.kind for e in result.in_use})
        counts = ", ".join(f"{sum(e.kind == k for e in result.in_use)} {k}" for k in kinds)
        lines.append(f"kept {len(result.in_use)} entries in use (locked by a build or used in the last "
                     f"{IN_USE_GRACE_S // 60} minutes): {counts}")
    freed = sum(e.bytes for e in result.removed)
    lines.append(f"{verb} {len(result.removed)} entries, {human(freed)}; entries now {human(result.bytes_after)}")
    return "\n".join(lines)


command = cache
