"""``clustersim search``: the best feasible layouts of a scenario's model on its cluster.

The search itself is ``simulator.planning.search.run_search`` (see docs/search-and-plan.md); this module
prints the ranked table (or one JSON object) and writes ``results.csv``, ``pruned.csv`` and ``best.yaml``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from simulator.errors import InfeasibleConfig
from simulator.files import finite_json
from simulator.planning.search import (
    FAST_NETWORK,
    Evaluated,
    SearchOptions,
    SearchResult,
    run_search,
    usd_per_million_tokens,
)
from simulator.planning.search_space import Pruned
from simulator.report.progress import reporting, stage
from simulator.report.style import format_count, format_percent, write_text_atomic
from simulator.report.tabular import reports_to_rows, write_csv
from simulator.scenario import ClusterRef, Scenario, load_scenario
from simulator.topology.loader import shipped_topology

RULES = ("divisibility", "equivalent", "invalid", "memory", "dominated")
TABLE_WIDTH = 120  # columns when stdout is not a terminal (rich would otherwise squeeze to 80)


def search_command(args: argparse.Namespace) -> int:
    """Load, search, print (table or JSON) and write the outputs; no feasible layout is a user error."""
    scenario = load_scenario(args.scenario, args.overrides)
    options = SearchOptions(
        top=args.top, max_points=args.max_points, workers=args.workers or os.cpu_count() or 1,
        objective=args.objective,
    )  # fmt: skip
    with reporting("search"):
        stage(f"searching the layouts of {scenario.model.name} (at most {options.max_points} simulated)")
        result = run_search(scenario, options)
        if args.out is not None:
            stage(f"writing {args.out}")
            write_outputs(result, args.out)
    if not result.ranked:
        raise InfeasibleConfig(f"no layout runs and fits: {counts_line(result)}", field="parallelism")
    if args.json:
        sys.stdout.write(finite_json(result_json(result)) + "\n")
    else:
        print_result(result, Console(width=None if sys.stdout.isatty() else TABLE_WIDTH))
    return 0


# --------------------------------------------------------------------------------------------- counts
def pruned_by_rule(result: SearchResult) -> dict[str, int]:
    """Points pruned before simulation, per rule (in RULES order)."""
    counts = Counter(p.rule for p in result.space.pruned)
    return {rule: counts[rule] for rule in RULES if counts[rule]}


def counts(result: SearchResult) -> dict[str, int]:
    """How many points went where: every point of the space is exactly one of pruned, capped, simulated
    (timed on the fast path) or bounded (skipped: its compute alone, or its busiest stream, outlasts the best
    layouts' steps)."""
    return {
        "space": result.space.size,
        "pruned": len(result.space.pruned),
        "capped": len(result.space.capped),
        "simulated": len(result.space.candidates) - len(result.bounded),
        "bounded": len(result.bounded),
        "infeasible": len(result.infeasible),
        "refined": result.refined,
        "ranked": len(result.ranked),
        "contended": sum(e.contended for e in result.ranked),
    }


def counts_line(result: SearchResult) -> str:
    """One line: tried / pruned (by rule) / capped / infeasible / re-simulated."""
    c = counts(result)
    rules = ", ".join(f"{rule} {n}" for rule, n in pruned_by_rule(result).items())
    network = result.scenario.config.network.model
    return (
        f"{c['space']} layouts: {c['pruned']} pruned ({rules or 'none'}), {c['capped']} beyond --max-points, "
        f"{c['bounded']} bounded (compute or busiest stream slower than the best steps), "
        f"{c['simulated']} simulated on the {FAST_NETWORK} model (fast path; {c['infeasible']} infeasible, "
        f"{c['contended']} marked for contention), {c['refined']} re-simulated with the {network} model"
        f"{agreement_note(result)}"
    )


def agreement_note(result: SearchResult) -> str:
    """How far the fast path was from the engine on the confirmed layouts (empty when none was re-timed)."""
    diffs = [
        abs(e.fast_step_s / e.report.step_time_s - 1) for e in result.ranked if e.fast_step_s is not None
    ]
    return f" (fast path within {max(diffs):.2%} of it)" if diffs else ""


# ---------------------------------------------------------------------------------------------- table
def _row_cells(rank: int, ev: Evaluated, result: SearchResult) -> list[str]:
    r = ev.report
    cells = [
        f"{rank}{'*' if ev.own else ''}", ev.label, ev.network, f"{r.step_time_s:.3f}",
        format_count(r.tokens_per_s), format_percent(r.mfu), f"{r.memory_gib_per_gpu.total:.1f}",
        "yes" if r.fits_memory else "NO",
    ]  # fmt: skip
    if result.options.objective == "cost":
        cells.append(f"{usd_per_million_tokens(r, result.usd_per_gpu_hour):.3f}")
    return cells


def print_result(result: SearchResult, console: Console) -> None:
    """The ranked table, the point counts, the scenario's own layout and how to run the best."""
    s = result.scenario
    title = f"clustersim search · {s.name} · {s.model.name} on {result.best.report.gpus} GPUs · by {result.options.objective}"
    table = Table(title=Text(title), title_justify="left")
    for name in ("#", "layout", "network", "step s", "tokens/s", "MFU", "GiB/GPU", "fits"):
        table.add_column(name, justify="left" if name in ("layout", "network") else "right", no_wrap=True)
    if result.options.objective == "cost":
        table.add_column(f"$/M tokens at ${result.usd_per_gpu_hour:g}/GPU-h", justify="right")
    for rank, ev in enumerate(result.ranked[: result.options.top], start=1):
        table.add_row(*(Text(cell) for cell in _row_cells(rank, ev, result)))
    console.print(table)
    lines = [counts_line(result) + f" · {result.wall_s:.1f} s wall", own_line(result)]
    changes = best_overrides(result)
    if changes:
        lines.append(f"run the best: clustersim run {s.file} " + " ".join(f"--set {c}" for c in changes))
    for line in lines:
        console.print(Text(line), soft_wrap=True)


def own_line(result: SearchResult) -> str:
    """The scenario's own layout (marked * in the table): its rank and how much faster the best is."""
    own = result.own
    if own is None:
        return f"scenario's own layout: cannot run here ({result.own_reason})"
    rank = next(i for i, e in enumerate(result.ranked, start=1) if e.own)
    speedup = result.best.report.tokens_per_s / own.report.tokens_per_s
    return f"scenario's own layout: {own.label}, rank {rank}, {own.report.step_time_s:.3f} s; the best is {speedup:.2f}× its throughput"


def best_overrides(result: SearchResult) -> list[str]:
    """``--set`` arguments that turn the scenario into the best layout (only the keys that change)."""
    best = result.best
    if best.layout is None or best.own:
        return []
    mine = set(result.own.layout.overrides()) if result.own and result.own.layout else set()
    return [o for o in best.layout.overrides() if o not in mine]


# ----------------------------------------------------------------------------------------------- JSON
def _evaluated_json(rank: int, ev: Evaluated, result: SearchResult) -> dict[str, Any]:
    r = ev.report
    return {
        "rank": rank, "label": ev.label, "own": ev.own, "network": ev.network,
        "layout": r.layout.model_dump() if r.layout is not None else None,
        "step_time_s": r.step_time_s, "tokens_per_s": r.tokens_per_s, "mfu": r.mfu,
        "fast_step_time_s": ev.fast_step_s, "contended": ev.contended,
        "memory_gib_per_gpu": r.memory_gib_per_gpu.total, "fits_memory": r.fits_memory,
        "usd_per_million_tokens": usd_per_million_tokens(r, result.usd_per_gpu_hour),
    }  # fmt: skip


def result_json(result: SearchResult) -> dict[str, Any]:
    """The search as one JSON object: counts, the top layouts, the scenario's own, the best's overrides."""
    top = result.ranked[: result.options.top]
    own_rank = next((i for i, e in enumerate(result.ranked, start=1) if e.own), None)
    return {
        "scenario": result.scenario.name, "objective": result.options.objective,
        "network": result.scenario.config.network.model, "gpus": result.best.report.gpus,
        "counts": counts(result), "pruned_by_rule": pruned_by_rule(result),
        "results": [_evaluated_json(i, e, result) for i, e in enumerate(top, start=1)],
        "own": _evaluated_json(own_rank, result.own, result) if result.own and own_rank else None,
        "own_reason": result.own_reason, "best_overrides": best_overrides(result), "wall_s": result.wall_s,
    }  # fmt: skip


# -------------------------------------------------------------------------------------------- outputs
def _pruned_row(p: Pruned) -> dict[str, object]:
    return {"label": p.layout.label, "rule": p.rule, "reason": p.reason, **vars(p.layout)}


def write_outputs(result: SearchResult, out_dir: Path) -> list[Path]:
    """``results.csv`` (every simulated layout that runs, ranked), ``pruned.csv`` (every other point with
    its rule and reason) and ``best.yaml`` (the winning scenario), each written atomically."""
    out_dir.mkdir(parents=True, exist_ok=True)
    extras = [
        {"rank": i, "label": e.label, "own": e.own, "network": e.network,
         "sequence_parallel": e.report.layout.sequence_parallel if e.report.layout else "",
         "recompute": e.report.layout.recompute if e.report.layout else ""}
        for i, e in enumerate(result.ranked, start=1)
    ]  # fmt: skip
    written = [write_csv(reports_to_rows([e.report for e in result.ranked], extras), out_dir / "results.csv")]
    capped = (Pruned(lay, "capped", "beyond --max-points") for lay in result.space.capped)
    rows = [_pruned_row(p) for p in (*result.space.pruned, *result.infeasible, *result.bounded, *capped)]
    pruned_csv = out_dir / "pruned.csv"
    written.append(
        write_csv(rows, pruned_csv) if rows else write_text_atomic(pruned_csv, "label,rule,reason\n")
    )
    if result.ranked:
        written.append(write_text_atomic(out_dir / "best.yaml", scenario_yaml(result, out_dir)))
    return written


def scenario_yaml(result: SearchResult, out_dir: Path) -> str:
    """The winning scenario as YAML: the input with the best layout, its topology path made relative to
    ``out_dir`` so that the file runs from there."""
    best = result.best
    cfg = best.scenario.config
    doc: dict[str, Any] = {"name": f"{result.scenario.name}-best"}
    doc.update(cfg.model_dump(mode="json", exclude_defaults=True, exclude_none=True, exclude={"name"}))
    if best.layout is not None:
        for section, values in best.layout.sections().items():
            doc.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    doc["cluster"] = _portable_cluster(best.scenario, out_dir)
    header = (
        f"# Written by clustersim search: the best of {len(result.ranked)} layouts of {result.scenario.file} by "
        f"{result.options.objective}\n# ({best.report.step_time_s:.4g} s per step, "
        f"{best.report.tokens_per_s:,.0f} tokens/s, MFU {best.report.mfu:.1%}, {best.network} network model).\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False)


def _portable_cluster(scenario: Scenario, out_dir: Path) -> Any:
    """The scenario's cluster entry, its topology file named as a shipped topology (``dgx-h100``) when it
    is one, else by a path relative to ``out_dir``."""
    cluster = scenario.config.cluster
    if isinstance(cluster, ClusterRef) and not isinstance(cluster.topology, str):
        return cluster.model_dump(mode="json", exclude_defaults=True)  # an inline topology
    path = Path(scenario.topology_file)
    shipped = shipped_topology(path.stem)
    ref = (
        path.stem
        if shipped is not None and shipped.resolve() == path.resolve()
        else os.path.relpath(path, out_dir.resolve())
    )
    if isinstance(cluster, str):
        return ref
    return {**cluster.model_dump(mode="json", exclude_defaults=True), "topology": ref}
