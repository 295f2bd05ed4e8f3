"""Options shared by several commands, declared once."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from mkimage.errors import MkspawnError
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


# Files read by the commands: their kind (a directory, a FIFO) is checked when they are
# opened, so the refusal is our one line rather than click's usage text.
input_file = click.Path(path_type=Path)

_JSON_PRINTED = "mkspawn.json_printed"


def json_option(f: F) -> F:
    """``--json``; under it a refusal also prints a JSON object on stdout (unless the
    command already printed its result), then fails as usual on stderr."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except MkspawnError as e:
            if kwargs.get("as_json") and not click.get_current_context().meta.get(_JSON_PRINTED):
                echo_json(error_json(e))
            raise

    return click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")(wrapper)  # type: ignore[return-value]


def error_json(e: MkspawnError) -> dict[str, object]:
    return {"ok": False, "error": {"code": e.code, "exit_code": int(e.exit_code), "message": e.message,
                                   "hint": e.hint}}


def recipe_argument(f: F) -> F:
    return click.argument("recipe", type=click.Path(path_type=Path, dir_okay=False))(f)


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))
    context = click.get_current_context(silent=True)
    if context is not None:
        context.meta[_JSON_PRINTED] = True


def trust_option(f: F) -> F:
    return click.option("--trust", "trust_dir", type=click.Path(path_type=Path, file_okay=False),
                        help="Trust store directory [default: ~/.config/mkspawn/trust].")(f)


def state_option(f: F) -> F:
    return click.option("--state", "state_file", type=input_file,
                        help="Rollback state file: refuse versions lower than the highest verified one.")(f)


def load_trust(trust_dir: Path | None, *, must_exist: bool = True) -> TrustStore:
    """``--trust DIR`` must exist; the default store may be absent only where ``must_exist`` is False."""
    if trust_dir is not None:
        return load_trust_store(trust_dir, must_exist=True)
    return load_trust_store(default_trust_dir(os.environ), must_exist=must_exist)
