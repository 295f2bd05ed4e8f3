"""The `mkspawn` command line: parse, call one library function, render.

This module is the only error boundary: a known ``MkspawnError`` becomes one line on
stderr and its documented exit code; anything else is a bug and says so.  SIGINT and
SIGTERM become exceptions in the main thread, so every ``with``/``finally`` on the way
out removes its temp files and kills its child processes before the process exits
130 or 143 with one line.

Only the standard library is imported before the signal handlers are installed: an
interrupt while click, cryptography and the commands are still being imported must end
the same way as one in the middle of a build.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    import click

# Each module in mkimage.commands exports ``command`` (a click command or group).
COMMANDS = ("bundle", "check", "dt", "initramfs", "keys", "load", "recipe", "registry")
# ExitCode.INTERRUPTED and ExitCode.TERMINATED, spelled out because mkimage.errors is
# not imported before the handlers are in place (tests/test_exit_codes.py compares them).
EXIT_SIGINT = 130
EXIT_SIGTERM = 143


class Terminated(BaseException):
    """SIGTERM, raised like KeyboardInterrupt so that only the CLI boundary catches it."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    # Once: a second signal must not cut the clean-up the first one started.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _ignore)
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated


def _ignore(_signum: int, _frame: FrameType | None) -> None:
    """A Python-level no-op rather than SIG_IGN, which children would inherit."""


def _install_signal_handlers() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)


class _Context:
    debug = False


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"mkspawn: error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    _install_signal_handlers()
    try:
        code = _main(argv)
    except KeyboardInterrupt:
        _fail("interrupted by SIGINT [interrupted]", EXIT_SIGINT)
    except Terminated:
        _fail("terminated by SIGTERM [terminated]", EXIT_SIGTERM)
    sys.exit(code)


def _main(argv: list[str] | None) -> int:
    import traceback

    import click

    from mkimage import __version__
    from mkimage.errors import ExitCode, MkspawnError

    try:
        root = _root()
        root.main(args=argv, prog_name="mkspawn", standalone_mode=False)
    except click.exceptions.Exit as e:
        return e.exit_code
    except click.exceptions.Abort:
        raise KeyboardInterrupt from None
    except click.exceptions.NoArgsIsHelpError as e:
        e.show()  # a bare `mkspawn` or group: the help is the message
        return ExitCode.USAGE
    except click.ClickException as e:
        # click's own usage errors (unknown option, missing argument), on one line.
        verb = e.ctx.command_path.partition(" ")[2] if isinstance(e, click.UsageError) and e.ctx else ""
        where = f"{verb}: " if verb else ""
        _fail(f"{where}{e.format_message()} [usage]", ExitCode.USAGE)
    except MkspawnError as e:
        if _Context.debug:
            traceback.print_exc()
        _fail(e.render(), e.exit_code)
    except BrokenPipeError:
        return ExitCode.OK
    except Exception:  # noqa: BLE001 - the one place every unexpected failure lands
        traceback.print_exc()
        _fail(f"internal error in mkspawn {__version__}; this is a bug, please report it", ExitCode.INTERNAL)
    return ExitCode.OK


def _root() -> click.Group:
    import importlib
    import logging

    import click

    from mkimage import __version__

    log = logging.getLogger("mkspawn")

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

    for name in COMMANDS:
        module = importlib.import_module(f"mkimage.commands.{name}")
        commands = module.command if isinstance(module.command, (list, tuple)) else [module.command]
        for command in commands:
            cli.add_command(command)
    return cli
