"""Options shared by several commands, declared once."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from mkimage.signing.trust import TrustStore, default_trust_dir, load_trust_store

F = TypeVar("F", bound=Callable[..., Any])


def set_option(f: F) -> F:
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override a recipe value (TOML syntax, or a plain string).",
    )(f)


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(f)


def recipe_argument(f: F) -> F:
    return click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))(f)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def trust_option(f: F) -> F:
    return click.option("--trust", "trust_dir", type=click.Path(path_type=Path, file_okay=False),
                        help="Trust store directory [default: ~/.config/mkspawn/trust].")(f)


def state_option(f: F) -> F:
    return click.option("--state", "state_file", type=click.Path(path_type=Path, dir_okay=False),
                        help="Rollback state file: refuse versions lower than the highest verified one.")(f)


def load_trust(trust_dir: Path | None, *, must_exist: bool = True) -> TrustStore:
    """``--trust DIR`` must exist; the default store may be absent only where ``must_exist`` is False."""
    if trust_dir is not None:
        return load_trust_store(trust_dir, must_exist=True)
    return load_trust_store(default_trust_dir(os.environ), must_exist=must_exist)
