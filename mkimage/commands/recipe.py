"""`mkspawn recipe show|schema`."""

from __future__ import annotations

from pathlib import Path

import click

from mkimage.commands.options import echo_json, json_option, recipe_argument, set_option
from mkimage.recipe.docs import render_toml, schema
from mkimage.recipe.load import load_recipe, recipe_to_dict


@click.group("recipe")
def recipe_group() -> None:
    """Inspect recipes."""


@recipe_group.command("show")
@recipe_argument
@set_option
@json_option
def show(recipe: Path, overrides: tuple[str, ...], as_json: bool) -> None:
    """Print the fully resolved recipe (extends and --set applied, paths absolute)."""
    data = recipe_to_dict(load_recipe(recipe, overrides))
    if as_json:
        echo_json(data)
    else:
        click.echo(render_toml(data), nl=False)


@recipe_group.command("schema")
def schema_cmd() -> None:
    """Print every recipe setting with its type, default and help as JSON."""
    echo_json(schema())


command = recipe_group
