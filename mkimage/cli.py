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

# Every verb: (name, module in mkimage.commands exporting it as ``command`` — a click
# command or group, or a list of them — and the one line `mkspawn --help` shows).  A
# verb's module is imported only when that verb runs (or its own --help is asked for),
# so `--version`, `--help` and the light verbs never pay for the heavy ones' imports.
COMMANDS = (
    ("build", "bundle", "Build a recipe's bundle (signed when a key is given)."),
    ("cache", "cache", "Show the build cache's use, or prune it."),
    ("check", "check", "Check a bundle: the loader contract (--static) or a QEMU boot."),
    ("doctor", "doctor", "Check host tools, KVM, cache and trust store; name what to install."),
    ("dt", "dt", "Print the instance-create overlay a recipe generates."),
    ("initramfs", "initramfs", "Build a recipe's initramfs, or list an existing one."),
    ("inspect", "bundle", "Show a bundle's components, signatures and metadata."),
    ("keygen", "keys", "Generate a signing key pair."),
    ("load", "load", "Verify a bundle and load its spawn kernel on this host."),
    ("provenance", "evidence", "Print a bundle's SLSA provenance statement."),
    ("pull", "registry", "Fetch a bundle from a registry, verify it, then write it."),
    ("push", "registry", "Publish a bundle to a registry or an OCI layout."),
    ("recipe", "recipe", "Inspect recipes."),
    ("reproduce", "evidence", "Rebuild a bundle from its provenance and compare it."),
    ("sbom", "evidence", "Print a bundle's CycloneDX SBOM."),
    ("sign", "bundle", "Add signatures to a bundle."),
    ("verify", "bundle", "Verify a bundle's structure, digests and signatures."),
)
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
    json = False


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
        # Import the verb's module here, not inside click's main, whose KeyboardInterrupt
        # handler would print a stray blank line before our one-line message.  The
        # group's own options take no values, so the first bare word is the verb.
        args = sys.argv[1:] if argv is None else argv
        verb = next((a for a in args if not a.startswith("-")), None)
        if verb is not None:
            load_command(verb)
        # A flag without a value, so its presence anywhere means JSON on stdout: no bars.
        _Context.json = "--json" in args
        try:
            root.main(args=args, prog_name="mkspawn", standalone_mode=False)
        finally:
            _close_progress()  # the bars end before any error line is written
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
    import logging
    import os

    import click

    from mkimage import __version__

    log = logging.getLogger("mkspawn")

    @click.group(cls=_lazy_group_class(), context_settings={"help_option_names": ["-h", "--help"]})
    @click.version_option(__version__, prog_name="mkspawn")
    @click.option("--debug", is_flag=True, help="Show commands run and tracebacks of failures.")
    @click.option("-v", "--verbose", is_flag=True, help="Show what each stage does.")
    @click.option("-q", "--quiet", is_flag=True, help="No progress bars: one plain line per stage.")
    def cli(debug: bool, verbose: bool, quiet: bool) -> None:
        """Build, sign, verify and check boot bundles for multikernel spawned kernels."""
        from mkimage import progress

        _Context.debug = debug
        level = logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING
        # Bars only for a person at a terminal; a log, a pipe, --quiet or --json get lines.
        fancy = not (quiet or _Context.json) and sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        progress.bind(progress.RichRenderer() if fancy else progress.PlainRenderer())
        handler = progress.LogHandler()
        handler.setFormatter(logging.Formatter("mkspawn: %(message)s"))
        log.handlers[:] = [handler]
        log.setLevel(level)

    return cli


def _close_progress() -> None:
    progress = sys.modules.get("mkimage.progress")
    if progress is not None:
        progress.renderer().close()


def load_command(verb: str) -> click.Command | None:
    """The click command of ``verb``, importing only its module."""
    import importlib

    row = next((r for r in COMMANDS if r[0] == verb), None)
    if row is None:
        return None
    module = importlib.import_module(f"mkimage.commands.{row[1]}")
    exported = module.command if isinstance(module.command, (list, tuple)) else [module.command]
    command: click.Command = next(c for c in exported if c.name == verb)
    command.short_help = command.short_help or row[2]
    return command


def _lazy_group_class() -> type[click.Group]:
    import click

    class LazyGroup(click.Group):
        def list_commands(self, ctx: click.Context) -> list[str]:
            return sorted(r[0] for r in COMMANDS)

        def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
            return load_command(cmd_name)

        def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
            # From the table: listing the verbs must not import every verb's module.
            with formatter.section("Commands"):
                formatter.write_dl([(name, summary) for name, _module, summary in sorted(COMMANDS)])

    return LazyGroup
