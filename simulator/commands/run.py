"""``clustersim run``: simulate one scenario and print or write its report."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console

from simulator.report.style import write_text_atomic
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


def run_command(args: argparse.Namespace) -> int:
    """Load, simulate, report."""
    scenario = load_scenario(args.scenario, args.overrides)
    result = simulate(scenario, mode="full" if args.full else None)
    if args.out is not None:
        write_outputs(result, args.out)
    if args.trace is not None:
        from simulator.report.perfetto import write_chrome_trace

        write_chrome_trace(result.trace.expanded(), args.trace)
    if args.timeline is not None:
        from simulator.report.timeline import timeline_chart

        timeline_chart(result.trace.expanded(), args.timeline)
    if args.json:
        sys.stdout.write(result.report.model_dump_json() + "\n")
    else:
        from simulator.report.table import print_report

        print_report(result.report, Console())
    return 0
