"""The two kinds of failure clustersim keeps apart (STYLE.md, point 3).

* ``UserInputError`` and subclasses: the user's input is wrong or cannot run. The CLI prints the message
  on one line and exits with status 2; sweeps record ``InfeasibleConfig`` and go on.
* Anything else (``AssertionError``, ``RuntimeError`` ...) is a bug in clustersim and keeps its traceback.
"""

from __future__ import annotations


class UserInputError(Exception):
    """A mistake in what the user gave us: a file, a field, a value."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        self.file = file
        self.field = field
        self.reason = message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """``file: field: reason`` on a single line, omitting the parts we do not know."""
        parts = [p for p in (self.file, self.field) if p]
        text = " ".join(self.reason.split())
        return ": ".join([*parts, text]) if parts else text


class ScenarioError(UserInputError):
    """A scenario, topology, sweep or catalog file is malformed (bad YAML, unknown key, bad value)."""


class InfeasibleConfig(UserInputError):
    """A well-formed configuration that cannot run, e.g. ``tp=3 does not divide heads=96``.

    Sweeps record the reason and skip the point instead of failing.
    """
