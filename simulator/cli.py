"""The ``clustersim`` command line: run, batch, compare, collective, validate, search, plan.

Every command explains itself with ``--help``. A mistake in the user's input prints one line naming the
file, the field and what is wrong, and exits with status 2; no traceback. Internal errors (bugs) keep theirs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from simulator import __version__
from simulator.errors import UserInputError

EXIT_USER_ERROR = 2

Handler = Callable[[argparse.Namespace], int]


def _add_run(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "run",
        help="simulate one training step of a scenario",
        description="Simulate one optimizer step of a scenario and report step time, throughput, MFU, "
        "where the time goes (compute, exposed and hidden communication, pipeline bubble) and memory per GPU.",
        epilog="example: clustersim run scenarios/quickstart.yaml --set parallelism.tp=4 --json",
    )
    p.add_argument("scenario", type=Path, help="scenario YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. --set parallelism.tp=4 (repeatable)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print exactly one JSON report object to stdout")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write report.json and charts (breakdown, memory, links) into DIR")  # fmt: skip
    p.add_argument(
        "--trace", type=Path, metavar="FILE", help="write a Perfetto/Chrome trace (open in ui.perfetto.dev)"
    )
    p.add_argument(
        "--timeline", type=Path, metavar="FILE", help="write a Gantt chart of the step (PNG or SVG)"
    )
    p.add_argument(
        "--full", action="store_true", help="simulate every rank instead of one per symmetry class"
    )
    p.set_defaults(handler=_cmd_run)


def _cmd_run(args: argparse.Namespace) -> int:
    from simulator.commands.run import run_command

    return run_command(args)


def _add_validate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "validate",
        help="compare predictions with published measured runs",
        description="Simulate every published run shipped with clustersim (Megatron-LM SC'21 on A100, "
        "Megatron-Core on H100, held-out runs) and print predicted vs measured step time. Exits 1 when a "
        "row is outside its tolerance.",
    )
    p.add_argument("--suite", action="append", default=[], metavar="NAME",
                   help="only this suite (repeatable); default: every suite")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    p.add_argument("--workers", type=int, default=1, help="processes to run rows in parallel (default 1)")
    p.set_defaults(handler=_cmd_validate)


def _cmd_validate(args: argparse.Namespace) -> int:
    from simulator.validation.command import validate_command

    return validate_command(args)


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (_add_run, _add_validate)  # type: ignore[type-arg]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="clustersim",
        description="Simulate distributed LLM training on GPU clusters: step time, throughput, MFU, "
        "communication, pipeline bubbles and memory, from a YAML scenario.",
    )
    parser.add_argument("--version", action="version", version=f"clustersim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clustersim`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except UserInputError as e:
        print(f"clustersim: error: {e.one_line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("clustersim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
