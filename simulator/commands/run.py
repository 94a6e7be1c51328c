"""``clustersim run``: simulate one scenario and print or write its report."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path

from simulator.build.program_builder import ProgramFactory
from simulator.build.setup import Setup
from simulator.engine.budget import (
    DRY_RUN_BUILD_PASSES,
    MAX_LAYER_PASSES,
    MAX_SIMULATED_OPS,
    check_ops,
    check_work,
    step_estimate,
)
from simulator.errors import InfeasibleConfig, UserInputError
from simulator.files import check_output_dir, check_output_file, finite_json
from simulator.report.progress import reporting, stage
from simulator.report.style import FIGURE_FORMATS, write_text_atomic
from simulator.scenario import Scenario, load_scenario
from simulator.simulate import SimulationResult, rank_classes, simulate
from simulator.topology.loader import build_cluster
from simulator.workload.ops import Collective


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


class _NotBuilt(Exception):
    """The programs are too big to build for an estimate (the step is still within the engine's limit)."""


def dry_run(scenario: Scenario, *, full: bool, as_json: bool) -> int:
    """Print the pre-flight estimate of a step (engine/budget.py) without simulating it; a step past the
    engine's limit (or one that cannot run) is refused with one line, its figures in the message."""
    cluster = build_cluster(scenario.topology, file=scenario.topology_file)
    setup = Setup(scenario, cluster, "full" if full else scenario.config.engine.mode)
    classes = rank_classes(setup)
    work = step_estimate(scenario, cluster, len(classes.representatives), setup.micro_batches, setup.dims.pp)
    refused: InfeasibleConfig | None = None
    try:
        check_work(work)
        if work.layer_passes > DRY_RUN_BUILD_PASSES:
            raise _NotBuilt
        # small enough to build the programs in seconds: count exactly (the engine is not started)
        factory = ProgramFactory(setup.workload, setup.inline_comm)
        programs = [factory.build(int(r)) for r in classes.representatives]
        collectives = sum(isinstance(op, Collective) for p in programs for op in p.ops)
        work = dataclasses.replace(work, ops=sum(len(p) for p in programs), collectives=collectives)
        check_ops(programs)
    except InfeasibleConfig as e:
        refused = e
    except _NotBuilt:
        pass
    doc = {
        **dataclasses.asdict(work),
        "graph_bytes": work.graph_bytes,
        "flows_per_phase": work.flows_per_phase,
    }
    doc |= {"max_layer_passes": MAX_LAYER_PASSES, "max_simulated_ops": MAX_SIMULATED_OPS}
    if refused is not None:  # one line on stderr and nothing on stdout, as every refusal
        raise refused
    if as_json:
        sys.stdout.write(finite_json(doc) + "\n")
    else:
        exact = (
            f"{work.ops:,} ops ({work.collectives:,} collectives)" if work.ops is not None else "not built"
        )
        sys.stdout.write(
            f"{scenario.name}: {work.gpus:,} GPUs, {work.simulated_ranks:,} simulated ranks, "
            f"{work.micro_batches:,} micro-batches x {work.layers_per_rank:,} layers per rank\n"
            f"  passes    {work.layer_passes:,} layer passes (limit {MAX_LAYER_PASSES:,})\n"
            f"  ops       {exact} (limit {MAX_SIMULATED_OPS:,})\n"
            f"  events    about one per op\n"
            f"  flows     about {work.flows_per_phase:,} per collective phase (one per GPU)\n"
            f"  graph     {work.graph_nodes:,} nodes, {work.graph_edges:,} links, "
            f"about {work.graph_bytes / 2**20:,.1f} MiB to build\n"
        )
    return 0


def run_command(args: argparse.Namespace) -> int:
    """Load, simulate, report."""
    check_output_paths(args)
    scenario = load_scenario(args.scenario, args.overrides)
    if getattr(args, "dry_run", False):
        return dry_run(scenario, full=args.full, as_json=args.json)
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
