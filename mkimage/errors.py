"""The project's error hierarchy.

Every failure a user can cause or meet is a ``MkspawnError``: it carries a stable
kebab-case ``code``, the process ``exit_code`` the CLI returns, and an optional
``hint``.  Only ``mkimage.cli`` catches the root class; anything else escaping is a
bug and is reported as such.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class ExitCode(enum.IntEnum):
    """Process exit statuses, documented in docs/exit-codes.md."""

    OK = 0
    STAGE_FAILED = 1
    USAGE = 2
    VERIFY_REJECTED = 3
    BOOT_CHECK_FAILED = 4
    ROLLBACK = 5
    INTERNAL = 70
    INTERRUPTED = 130  # SIGINT
    TERMINATED = 143  # SIGTERM


class MkspawnError(Exception):
    """Root of every expected failure."""

    exit_code: ExitCode = ExitCode.STAGE_FAILED
    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.hint = hint

    def render(self) -> str:
        """The one line the user sees."""
        return f"{self.message} [{self.code}]"


@dataclass(frozen=True, slots=True)
class Location:
    """Where in the user's input a value came from: a file and line, or a CLI override."""

    file: Path | None
    line: int | None = None
    origin: str | None = None  # e.g. "--set kernel.cmdline" when not from a file

    def __str__(self) -> str:
        if self.origin is not None:
            return self.origin
        if self.file is None:
            return "<recipe>"
        shown = shown_path(self.file)
        return f"{shown}:{self.line}" if self.line else shown


def shown_path(path: Path) -> str:
    """Paths under the working directory are shown relative, as the user typed them;
    any other path absolute (never as ``../../x``)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class UsageError(MkspawnError):
    exit_code = ExitCode.USAGE
    code = "usage"


class RecipeError(MkspawnError):
    """A recipe problem, pointing at the file, line and key."""

    exit_code = ExitCode.USAGE
    code = "recipe"

    def __init__(
        self,
        loc: Location,
        key: str | None,
        message: str,
        *,
        code: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, code=code, hint=hint)
        self.loc = loc
        self.key = key

    def render(self) -> str:
        where = f"{self.loc}: "
        if self.key:
            section, _, rest = self.key.partition(".")
            where += f"[{section}] {rest}: " if rest else f"{section}: "
        return f"{where}{self.message} [{self.code}]"


class ToolError(MkspawnError):
    """An external program failed (or was missing)."""

    code = "tool-failed"

    def __init__(
        self,
        message: str,
        *,
        argv: list[str] | None = None,
        returncode: int | None = None,
        stderr_tail: str = "",
        code: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, code=code, hint=hint)
        self.argv = argv or []
        self.returncode = returncode
        self.stderr_tail = stderr_tail


class FormatError(MkspawnError):
    """Bytes that do not decode as the format they claim to be."""

    code = "bad-format"

    def __init__(
        self, message: str, *, offset: int | None = None, code: str | None = None
    ) -> None:
        if offset is not None:
            message = f"at offset {offset}: {message}"
        super().__init__(message, code=code)
        self.offset = offset


class VerifyError(MkspawnError):
    """A bundle (or image) failed verification; messages say observed vs expected."""

    exit_code = ExitCode.VERIFY_REJECTED
    code = "verify-failed"


class RollbackError(VerifyError):
    exit_code = ExitCode.ROLLBACK
    code = "rollback"


class BootCheckError(MkspawnError):
    exit_code = ExitCode.BOOT_CHECK_FAILED
    code = "boot-check-failed"


class InputError(MkspawnError):
    """A file named on the command line (not a recipe key) is missing or unusable."""

    exit_code = ExitCode.USAGE
    code = "bad-input"


class RegistryError(MkspawnError):
    """A registry could not be reached, refused our credentials, or failed a request."""

    code = "registry-error"
