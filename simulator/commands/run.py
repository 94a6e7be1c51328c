"""``clustersim run``: simulate one scenario and print or write its report."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from simulator.errors import UserInputError
from simulator.files import check_output_dir, check_output_file
from simulator.report.progress import reporting, stage
from simulator.report.style import FIGURE_FORMATS, write_text_atomic
from simulator.scenario import load_scenario
from simulator.simulate import SimulationResult, simulate


def write_outputs(result: SimulationResult, out_dir: Path) -> list[Path]:
    """Write report.json and the step, memory and link charts into ``out_dir`` (each file atomically)."""
    from simulator.report.charts import links_chart, memory_chart, step_breakdown_chart

    out_dir.mkdir(parents=True, exist_ok=True)
    report = result.report
    written = [write_text_atomic(out_dir / "report.json", report.model_dump_json(indent=2) + "\n")]
    written.append(step_breakdown_chart(report, out_dir / "breakdown.png"))
    written.append(memory_chart(report, out_dir / "memory.png"))
    if report.links:
        written.append(links_chart(report, out_dir / "links.png"))
    return written


def check_output_paths(args: argparse.Namespace) -> None:
    """Refuse output paths that cannot be written before simulating, not after (issue #10, point 6)."""
    if args.out is not None:
        check_output_dir(args.out, "--out")
    if args.trace is not None:
        check_output_file(args.trace, "--trace")
    if args.timeline is not None:
        check_output_file(args.timeline, "--timeline", tuple(FIGURE_FORMATS))


def _write(what: Path, flag: str, write: Callable[[], object]) -> None:
    """Run one writer; a failure of the file system (full, gone read-only) is the user's to fix, and
    the atomic writers have left no partial file behind."""
    try:
        write()
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else e.__class__.__name__
        raise UserInputError(f"could not be written: {reason}", file=str(what), field=flag) from None


def run_command(args: argparse.Namespace) -> int:
    """Load, simulate, report."""
    check_output_paths(args)
    scenario = load_scenario(args.scenario, args.overrides)
    with reporting("run", enabled=args.full):  # a symmetric run takes seconds; --full may take minutes
        stage(f"simulating every rank of {scenario.name} (--full)")
        result = simulate(scenario, mode="full" if args.full else None)
    if args.out is not None:
        _write(args.out, "--out", lambda: write_outputs(result, args.out))
    if args.trace is not None:
        from simulator.report.perfetto import write_chrome_trace

        report = result.report
        _write(
            args.trace,
            "--trace",
            lambda: write_chrome_trace(
                result.trace.expanded(), args.trace, tiers=report.tiers, step_s=report.step_time_s
            ),
        )
    if args.timeline is not None:
        from simulator.report.timeline import timeline_chart

        _write(args.timeline, "--timeline", lambda: timeline_chart(result.trace.expanded(), args.timeline))
    if args.json:
        sys.stdout.write(result.report.model_dump_json() + "\n")
    else:
        from simulator.report.table import output_console, print_report

        print_report(result.report, output_console())
    return 0
