"""Progress of long work: the stages report it, the CLI decides how it is shown.

A stage opens a task (``with progress.task("kernel: compile", total=n, unit="objects")
as t``), advances it, and may mark named steps within it (``t.step("loader")``, the
stages of a QEMU boot).  Stages never print: they talk to whatever renderer the CLI
bound, and with none bound (library use, tests) every call is a no-op.

The CLI binds :class:`RichRenderer` on a terminal (bars with counts, rates and ETAs) and
:class:`PlainRenderer` otherwise (one line per task start, step and end, readable in a
CI log).  rich is imported only when the rich renderer is made, so the verbs that never
show progress do not load it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, Any, Protocol


class Task:
    """One piece of long work.  ``total`` is None when the amount is unknown."""

    def __init__(self, name: str, total: float | None, unit: str) -> None:
        self.name = name
        self.total = total
        self.unit = unit
        self.completed = 0.0
        self.started = time.monotonic()
        self.handle: Any = None  # the renderer's own record of the task
        self.ended = False

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def advance(self, amount: float = 1) -> None:
        self.completed += amount
        _renderer.advanced(self)

    def update(self, *, completed: float | None = None, total: float | None = None) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        _renderer.advanced(self)

    def step(self, label: str) -> None:
        """A named stage reached within the task (shown with the time since it began)."""
        _renderer.stepped(self, label)

    def end(self, *, ok: bool = True) -> None:
        """The task is over (once; :func:`task` calls it for a ``with`` block)."""
        if not self.ended:
            self.ended = True
            _renderer.finished(self, ok)


class Renderer(Protocol):
    def started(self, task: Task) -> None: ...
    def advanced(self, task: Task) -> None: ...
    def stepped(self, task: Task, label: str) -> None: ...
    def finished(self, task: Task, ok: bool) -> None: ...
    def message(self, text: str) -> None: ...
    def close(self) -> None: ...


class _Silent:
    def started(self, task: Task) -> None:
        pass

    def advanced(self, task: Task) -> None:
        pass

    def stepped(self, task: Task, label: str) -> None:
        pass

    def finished(self, task: Task, ok: bool) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


_renderer: Renderer = _Silent()


def bind(renderer: Renderer | None) -> None:
    """Show progress with ``renderer`` from now on (None: show nothing)."""
    global _renderer
    _renderer = renderer if renderer is not None else _Silent()


def renderer() -> Renderer:
    return _renderer


def start(name: str, *, total: float | None = None, unit: str = "") -> Task:
    """A task whose end is not a ``with`` block's (a transfer fed chunk by chunk): call
    :meth:`Task.end` when it is over."""
    t = Task(name, total, unit)
    _renderer.started(t)
    return t


@contextlib.contextmanager
def task(name: str, *, total: float | None = None, unit: str = "") -> Iterator[Task]:
    """A task from start to end; an exception ends it as failed (the CLI reports why)."""
    t = start(name, total=total, unit=unit)
    try:
        yield t
    except BaseException:
        t.end(ok=False)
        raise
    t.end()


def _amount(value: float, unit: str) -> str:
    if unit == "bytes":
        for suffix in ("B", "KiB", "MiB", "GiB"):
            if value < 1024:
                return f"{value:.0f} {suffix}" if suffix == "B" else f"{value:.1f} {suffix}"
            value /= 1024
        return f"{value:.1f} TiB"
    return f"{value:.0f} {unit}".rstrip()


class PlainRenderer:
    """One line per event on a stream: no cursor movement, nothing redrawn."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stderr
        with self._lock:
            stream.write(text + "\n")
            stream.flush()

    def started(self, task: Task) -> None:
        expected = f" ({_amount(task.total, task.unit)} expected)" if task.total and task.unit == "objects" else ""
        size = f" ({_amount(task.total, task.unit)})" if task.total and task.unit == "bytes" else ""
        self._write(f"mkspawn: {task.name}{expected}{size} …")

    def advanced(self, task: Task) -> None:
        pass

    def stepped(self, task: Task, label: str) -> None:
        self._write(f"mkspawn: {task.name}: {label} ({task.elapsed:.1f} s)")

    def finished(self, task: Task, ok: bool) -> None:
        if ok:
            done = f"{_amount(task.completed, task.unit)}, " if task.unit and task.completed else ""
            self._write(f"mkspawn: {task.name}: done ({done}{task.elapsed:.1f} s)")

    def message(self, text: str) -> None:
        self._write(text)

    def close(self) -> None:
        pass


class RichRenderer:
    """Bars on a terminal: objects done of expected with an ETA, bytes with a rate, or a
    spinner with the elapsed time when the amount is unknown.  rich is loaded by the
    first task, so a verb that starts none never imports it."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._progress: Any = None
        self.console: Any = None
        self._lock = threading.RLock()

    def _ensure(self) -> Any:
        with self._lock:
            if self._progress is None:
                self._progress = _rich_progress(self._stream)
                self.console = self._progress.console
            if not self._progress.live.is_started:
                self._progress.start()
            return self._progress

    def started(self, task: Task) -> None:
        task.handle = self._ensure().add_task(task.name, total=task.total, unit=task.unit)

    def advanced(self, task: Task) -> None:
        if task.handle is not None:
            self._progress.update(task.handle, completed=task.completed, total=task.total)

    def stepped(self, task: Task, label: str) -> None:
        self._ensure().console.print(f"  {task.name}: {label} ({task.elapsed:.1f} s)", markup=False,
                                     highlight=False)
        if task.handle is not None:
            self._progress.update(task.handle, description=f"{task.name}: {label}")

    def finished(self, task: Task, ok: bool) -> None:
        if task.handle is None:
            return
        if ok:
            # Done means the bar is full, whatever the estimate of the total was.
            total = task.completed if task.completed else 1
            self._progress.update(task.handle, description=task.name, completed=total, total=total)
        self._progress.stop_task(task.handle)
        with self._lock:
            if all(t.finished or t.id == task.handle for t in self._progress.tasks):
                # Nothing runs: leave the final lines on screen and stop redrawing, so the
                # command's own output (stdout, often the same terminal) is not drawn over.
                self._progress.stop()
                for t in list(self._progress.tasks):
                    self._progress.remove_task(t.id)

    def message(self, text: str) -> None:
        with self._lock:
            if self._progress is None:
                stream = self._stream or sys.stderr
                stream.write(text + "\n")
                stream.flush()
                return
        self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        with self._lock:
            if self._progress is not None and self._progress.live.is_started:
                self._progress.stop()


def _rich_progress(stream: IO[str] | None) -> Any:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )
    from rich.text import Text

    class ByUnit(ProgressColumn):
        """Size and rate for bytes, done/expected for counts, nothing when the amount is unknown."""

        def __init__(self) -> None:
            super().__init__()
            self._bytes = (DownloadColumn(binary_units=True), TransferSpeedColumn())
            self._count = MofNCompleteColumn()

        def render(self, task: Any) -> Text:
            unit = task.fields.get("unit", "")
            if unit == "bytes":
                return Text(" ").join(Text(str(c.render(task))) for c in self._bytes)
            if task.total is None:
                return Text("")
            return Text(f"{self._count.render(task)} {unit}".rstrip())

    console = Console(file=stream or sys.stderr)
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), ByUnit(),
                    TimeRemainingColumn(), TimeElapsedColumn(), console=console,
                    redirect_stdout=False, redirect_stderr=False)


class LogHandler(logging.Handler):
    """Log records through the bound renderer, so that messages appear above the bars
    rather than through them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            _renderer.message(self.format(record))
        except Exception:  # noqa: BLE001 - logging's own convention: report, never raise
            self.handleError(record)
