"""`mkspawn initramfs RECIPE -o FILE` and `mkspawn initramfs --list FILE`."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import click

from mkimage.commands.options import echo_json, json_option, set_option
from mkimage.errors import UsageError
from mkimage.initramfs.build import build_initramfs
from mkimage.initramfs.reader import CpioMember, Segment, read_initramfs_file
from mkimage.recipe.load import load_recipe

_file = click.Path(path_type=Path, dir_okay=False)


@click.command("initramfs")
@click.argument("recipe", required=False, type=_file)
@click.option("-o", "--output", "out", type=_file, help="Initramfs file to write.")
@click.option("--list", "list_path", type=_file, metavar="FILE",
              help="List the members of any newc initramfs (concatenated and compressed segments too).")
@set_option
@json_option
def command(recipe: Path | None, out: Path | None, list_path: Path | None, overrides: tuple[str, ...],
            as_json: bool) -> None:
    """Build the recipe's initramfs, or list an existing one."""
    if list_path is not None:
        if recipe is not None or out is not None or overrides:
            raise click.UsageError("--list takes no RECIPE, -o or --set")
        _list(list_path, as_json)
        return
    if recipe is None or out is None:
        raise click.UsageError("expected RECIPE -o FILE, or --list FILE")
    if out.is_dir():
        raise UsageError(f"{out}: is a directory", code="bad-output")
    model = load_recipe(recipe, overrides, need_kernel=False)
    assert model.metadata.source_date_epoch is not None  # the loader fills it in
    result = build_initramfs(model.initramfs, out, source_date_epoch=model.metadata.source_date_epoch,
                             kernel_config=model.kernel.config, arch=model.metadata.arch)
    if as_json:
        echo_json({"path": str(result.path), "size": result.size, "sha256": result.sha256,
                   "compression": str(result.compression), "media_type": result.media_type,
                   "early_size": result.early_size, "tools": result.tools,
                   "inputs": [list(pair) for pair in result.inputs]})
        return
    click.echo(f"{result.path}: {result.size} bytes, {result.compression}, {len(result.inputs)} host files, "
               f"sha256 {result.sha256}")


def _list(path: Path, as_json: bool) -> None:
    segments = read_initramfs_file(path)
    if as_json:
        echo_json({"file": str(path), "segments": [_segment_json(s) for s in segments]})
        return
    for segment in segments:
        click.echo(f"# segment {segment.index}: {segment.compression}, offset {segment.offset}, "
                   f"{segment.length} bytes, {len(segment.members)} members")
        for m in segment.members:
            click.echo(_member_line(segment, m))


def _member_line(segment: Segment, m: CpioMember) -> str:
    is_dev = stat.S_ISCHR(m.mode) or stat.S_ISBLK(m.mode)
    size = f"{m.rdev_major},{m.rdev_minor}" if is_dev else str(m.size)
    name = _text(m.name)
    if m.target is not None:
        name += f" -> {_text(m.target)}"
    return f"{segment.index} {stat.filemode(m.mode)} {m.uid}/{m.gid} {size:>10} {name}"


def _segment_json(segment: Segment) -> dict[str, Any]:
    return {"index": segment.index, "offset": segment.offset, "length": segment.length,
            "compression": str(segment.compression), "members": [_member_json(m) for m in segment.members]}


def _member_json(m: CpioMember) -> dict[str, Any]:
    out: dict[str, Any] = {"name": _text(m.name), "mode": stat.filemode(m.mode), "mode_octal": f"{m.mode:o}",
                           "uid": m.uid, "gid": m.gid, "size": m.size, "mtime": m.mtime, "ino": m.ino,
                           "nlink": m.nlink}
    if m.target is not None:
        out["target"] = _text(m.target)
    if stat.S_ISCHR(m.mode) or stat.S_ISBLK(m.mode):
        out["rdev"] = [m.rdev_major, m.rdev_minor]
    return out


def _text(raw: bytes) -> str:
    """Names are bytes; show non-UTF-8 ones with escapes rather than fail."""
    return raw.decode("utf-8", "backslashreplace")
