"""`mkspawn dt RECIPE`: print the generated device-tree source."""

from __future__ import annotations

from pathlib import Path

import click

from mkimage.commands.options import recipe_argument, set_option
from mkimage.devicetree.build import TreeKind, generated_trees
from mkimage.errors import UsageError
from mkimage.recipe.load import load_recipe
from mkimage.recipe.system import is_system_file, load_system
from mkimage.system import baseline_source


@click.command("dt")
@recipe_argument
@set_option
@click.option("--baseline", is_flag=True, help="Print the pool baseline instead of the instance tree.")
@click.option("--spawn", "spawn_name", default=None, metavar="NAME",
              help="System files: the instance tree of this spawn.")
def dt_command(recipe: Path, overrides: tuple[str, ...], baseline: bool, spawn_name: str | None) -> None:
    """Print the instance-create overlay (v2: the instance tree) the recipe generates.

    For a system file: the whole pool's baseline (--baseline) or one spawn's tree (--spawn)."""
    if is_system_file(recipe):
        _system_tree(recipe, overrides, baseline, spawn_name)
        return
    wanted = TreeKind.BASELINE if baseline else TreeKind.INSTANCE
    trees = [t for t in generated_trees(load_recipe(recipe, overrides)) if t.kind is wanted]
    if not trees:
        raise UsageError("the recipe describes no instance: set [instance] profile, cpus and memory_bytes",
                         code="no-instance")
    click.echo(trees[0].source(inline_user_file=True), nl=False)


def _system_tree(path: Path, overrides: tuple[str, ...], baseline: bool, spawn_name: str | None) -> None:
    if overrides:
        raise UsageError("--set applies to recipes; a system file gives each spawn's instance itself", code="usage")
    system = load_system(path)
    if baseline == (spawn_name is not None):
        names = ", ".join(str(s.instance.name) for s in system.spawns)
        raise UsageError(f"a system has one baseline and a tree per spawn: give --baseline or --spawn NAME "
                         f"({names})", code="usage")
    if baseline:
        click.echo(baseline_source(system), nl=False)
        return
    spawn = next((s for s in system.spawns if s.instance.name == spawn_name), None)
    if spawn is None:
        raise UsageError(f"no spawn named {spawn_name!r} in {path}", code="usage")
    tree = next(t for t in generated_trees(spawn.recipe) if t.kind is TreeKind.INSTANCE)
    click.echo(tree.source(inline_user_file=True), nl=False)


command = dt_command
