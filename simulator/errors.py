"""The two kinds of failure clustersim keeps apart (STYLE.md, point 3).

* ``UserInputError`` and subclasses: the user's input is wrong or cannot run. The CLI prints the message
  on one line and exits with status 2; sweeps record ``InfeasibleConfig`` and go on.
* Anything else (``AssertionError``, ``RuntimeError`` ...) is a bug in clustersim and keeps its traceback.
"""

from __future__ import annotations

# How much of a bad value an error echoes: enough to recognise it, never a 100 KB line (issue #12).
SHOWN_CHARS = 80
# The longest reason kept (a reason may list the valid names, ~600 characters); a file or field gets half.
PART_CHARS = 2000


def one_line_text(text: str, limit: int = PART_CHARS) -> str:
    """``text`` on one line: control characters escaped (a newline in a file name stays visible as
    ``\\n``), at most ``limit`` characters, with the number of characters left out."""
    out = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    if len(out) > limit:
        out = f"{out[:limit]}... ({len(out) - limit:,} more characters)"
    return out


def shorten(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, for echoing a user's value in an error."""
    if isinstance(value, int) and value.bit_length() > 256:  # repr() of a huge int is slow or refused
        return f"<an integer of {value.bit_length():,} bits>"
    return one_line_text(repr(value), limit)


class UserInputError(Exception):
    """A mistake in what the user gave us: a file, a field, a value."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        self.file = file
        self.field = field
        self.reason = message
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """``file: field: reason`` on a single line, omitting the parts we do not know."""
        parts = [one_line_text(p, PART_CHARS // 2) for p in (self.file, self.field) if p]
        text = one_line_text(" ".join(self.reason.split()))
        return ": ".join([*parts, text]) if parts else text


class ScenarioError(UserInputError):
    """A scenario, topology, sweep or catalog file is malformed (bad YAML, unknown key, bad value)."""


class InfeasibleConfig(UserInputError):
    """A well-formed configuration that cannot run, e.g. ``tp=3 does not divide heads=96``.

    Sweeps record the reason and skip the point instead of failing.
    """


class InternalError(Exception):
    """A result that breaks one of clustersim's own invariants (a bug, not the user's mistake): the CLI
    prints it as a bug report naming the scenario and exits with status 3 (``EXIT_INTERNAL_ERROR``)."""

    def __init__(self, message: str, *, scenario: str | None = None) -> None:
        self.scenario = scenario
        self.reason = message
        where = f"{one_line_text(scenario, PART_CHARS // 2)}: " if scenario else ""
        super().__init__(where + one_line_text(" ".join(message.split())))
