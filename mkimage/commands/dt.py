"""`mkspawn dt RECIPE`: print the generated device-tree source."""

from __future__ import annotations

from pathlib import Path

import click

from mkimage.commands.options import recipe_argument, set_option
from mkimage.devicetree.build import TreeKind, generated_trees
from mkimage.errors import UsageError
from mkimage.recipe.load import load_recipe


@click.command("dt")
@recipe_argument
@set_option
@click.option("--baseline", is_flag=True, help="Print the pool baseline instead of the instance tree.")
def dt_command(recipe: Path, overrides: tuple[str, ...], baseline: bool) -> None:
    """Print the instance-create overlay (v2: the instance tree) the recipe generates."""
    wanted = TreeKind.BASELINE if baseline else TreeKind.INSTANCE
    trees = [t for t in generated_trees(load_recipe(recipe, overrides)) if t.kind is wanted]
    if not trees:
        raise UsageError("the recipe describes no instance: set [instance] profile, cpus and memory_bytes",
                         code="no-instance")
    click.echo(trees[0].source(inline_user_file=True), nl=False)


command = dt_command
