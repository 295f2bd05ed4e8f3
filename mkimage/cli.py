"""The `mkspawn` command line: parse, call one library function, render.

This module is the only error boundary: a known ``MkspawnError`` becomes one line on
stderr and its documented exit code; anything else is a bug and says so.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback

import click

from mkimage import __version__
from mkimage.errors import ExitCode, MkspawnError

log = logging.getLogger("mkspawn")

# Each module in mkimage.commands exports ``command`` (a click command or group).
COMMANDS = ("bundle", "check", "dt", "initramfs", "keys", "load", "recipe", "registry")


class _Context:
    debug = False


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mkspawn")
@click.option("--debug", is_flag=True, help="Show commands run and tracebacks of failures.")
@click.option("-v", "--verbose", is_flag=True, help="Show progress messages.")
def cli(debug: bool, verbose: bool) -> None:
    """Build, sign, verify and check boot bundles for multikernel spawned kernels."""
    _Context.debug = debug
    level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mkspawn: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)


def _register() -> None:
    for name in COMMANDS:
        module = importlib.import_module(f"mkimage.commands.{name}")
        commands = module.command if isinstance(module.command, (list, tuple)) else [module.command]
        for command in commands:
            cli.add_command(command)


def _fail(message: str, code: int) -> None:
    click.echo(f"mkspawn: error: {message}", err=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    _register()
    try:
        cli.main(args=argv, prog_name="mkspawn", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        # click's own usage errors (unknown option, missing argument).
        e.show()
        sys.exit(ExitCode.USAGE)
    except click.exceptions.Abort:
        _fail("interrupted", ExitCode.INTERRUPTED)
    except MkspawnError as e:
        if _Context.debug:
            traceback.print_exc()
        _fail(e.render(), e.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted", ExitCode.INTERRUPTED)
    except BrokenPipeError:
        sys.exit(ExitCode.OK)
    except Exception:  # noqa: BLE001 - the one place every unexpected failure lands
        traceback.print_exc()
        _fail(f"internal error in mkspawn {__version__}; this is a bug, please report it", ExitCode.INTERNAL)
    sys.exit(ExitCode.OK)
