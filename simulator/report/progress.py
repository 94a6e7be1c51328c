"""Progress of a long command on stderr (issue #10, point 4): a rich progress bar when stderr is a
terminal, one plain line per stage otherwise (a CI log, a file), nothing when no command asked for it.

A command opens ``reporting("search")``; library code it calls marks ``stage("fast pass", total=240)`` and
``advance()`` without knowing whether anyone is listening (a ``ContextVar``: the default reporter does
nothing, so library calls and tests stay silent). Only the parent process reports: a worker of a pool
has its own context and reports nothing. stdout is left alone, so ``--json`` output stays one document.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import IO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class Reporter:
    """Receives stages and advances; this base class ignores them."""

    def stage(self, name: str, total: int | None = None) -> None:
        """A new stage begins (``total``: how many items it will ``advance`` through, if known)."""

    def advance(self, n: int = 1) -> None:
        """``n`` more items of the current stage are done."""

    def close(self) -> None:
        """The command ends."""


class LineReporter(Reporter):
    """One line per stage, with the time since the command started: ``clustersim search [3.2 s]: ...``."""

    def __init__(self, command: str, stream: IO[str] | None = None) -> None:
        self.command = command
        self.stream = stream if stream is not None else sys.stderr
        self.start = time.monotonic()

    def stage(self, name: str, total: int | None = None) -> None:
        elapsed = time.monotonic() - self.start
        self.stream.write(f"clustersim {self.command} [{elapsed:.1f} s]: {name}\n")
        self.stream.flush()


class BarReporter(Reporter):
    """A rich progress bar per stage on stderr (a spinner and elapsed time when the total is unknown)."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self.progress.start()
        self.task: TaskID | None = None

    def stage(self, name: str, total: int | None = None) -> None:
        self._finish()
        self.task = self.progress.add_task(f"{self.command}: {name}", total=total)

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def _finish(self) -> None:
        if self.task is not None:
            task = self.progress.tasks[-1]
            done = task.total if task.total is not None else max(task.completed, 1)
            self.progress.update(self.task, total=done, completed=done)

    def close(self) -> None:
        self._finish()
        self.progress.stop()


_SILENT = Reporter()
_CURRENT: ContextVar[Reporter | None] = ContextVar("clustersim_progress", default=None)


@contextmanager
def reporting(command: str, *, enabled: bool = True) -> Iterator[Reporter]:
    """Report the stages of ``command`` while the block runs: a bar if stderr is a terminal, else lines."""
    if not enabled:
        reporter: Reporter = Reporter()
    elif sys.stderr.isatty():
        reporter = BarReporter(command)
    else:
        reporter = LineReporter(command)
    token = _CURRENT.set(reporter)
    try:
        yield reporter
    finally:
        _CURRENT.reset(token)
        reporter.close()


def stage(name: str, total: int | None = None) -> None:
    """Mark the start of a stage of the running command (nothing happens outside ``reporting``)."""
    (_CURRENT.get() or _SILENT).stage(name, total)


def advance(n: int = 1) -> None:
    """Count ``n`` items of the current stage as done."""
    (_CURRENT.get() or _SILENT).advance(n)
