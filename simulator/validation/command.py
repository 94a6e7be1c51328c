"""``clustersim validate``: predicted vs measured for every published run shipped with clustersim."""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from rich.console import Console
from rich.table import Table

from simulator.validation.layer import korthikanti_cases, layer_times
from simulator.validation.suites import Result, run_rows, suite_rows

LAYER_SUITE = "korthikanti-2022-layer"
LAYER_TOLERANCE = 0.10


def _layer_rows() -> list[dict[str, object]]:
    """Korthikanti et al. 2022 Table 4: one layer's forward and backward under five variants (part of the
    A100 calibration's fitting data)."""
    out: list[dict[str, object]] = []
    for case in korthikanti_cases():
        fwd, bwd = layer_times(case)
        for part, pred, meas in (("forward", fwd, case.forward_s), ("backward", bwd, case.backward_s)):
            err = pred / meas - 1
            out.append({"suite": LAYER_SUITE, "run": f"{case.config} {part}", "role": "fit", "gpus": 8,
                        "measured_s": meas, "predicted_s": pred, "error": err, "tolerance": LAYER_TOLERANCE,
                        "ok": abs(err) <= LAYER_TOLERANCE})  # fmt: skip
    return out


def _as_dict(r: Result) -> dict[str, object]:
    return {"suite": r.row.suite, "run": r.row.name, "role": r.row.role, "gpus": r.gpus, "measured_s": r.row.measured_s,
            "predicted_s": r.predicted_s, "error": r.error, "tolerance": r.row.tolerance, "ok": r.ok}  # fmt: skip


def _summary(rows: list[dict[str, object]]) -> str:
    errs = [abs(float(r["error"])) for r in rows]  # type: ignore[arg-type]
    worst = max(rows, key=lambda r: abs(float(r["error"])))  # type: ignore[arg-type]
    bad = sum(not r["ok"] for r in rows)
    return (f"{len(rows)} rows: median |error| {100 * statistics.median(errs):.1f}%, max {100 * max(errs):.1f}% "
            f"({worst['suite']} {worst['run']}); {bad} outside tolerance")  # fmt: skip


def _table(rows: list[dict[str, object]]) -> Table:
    t = Table(title="clustersim validate: predicted vs measured step time")
    for col in ("suite", "run", "role", "GPUs", "measured", "predicted", "error", "within"):
        t.add_column(col, justify="right" if col in ("GPUs", "measured", "predicted", "error") else "left")
    for r in rows:
        err = float(r["error"])  # type: ignore[arg-type]
        t.add_row(str(r["suite"]), str(r["run"]), str(r["role"]), f"{r['gpus']:,}", _fmt(float(r["measured_s"])),  # type: ignore[arg-type]
                  _fmt(float(r["predicted_s"])), f"{100 * err:+.1f}%",  # type: ignore[arg-type]
                  f"±{100 * float(r['tolerance']):.0f}% " + ("yes" if r["ok"] else "NO"))  # type: ignore[arg-type]  # fmt: skip
    return t


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def validate_command(args: argparse.Namespace) -> int:
    """Run the suites, print the table and a summary line; exit 1 when a row is outside its tolerance."""
    wanted = list(args.suite)
    rows: list[dict[str, object]] = []
    if not wanted or LAYER_SUITE in wanted:
        rows += _layer_rows()
    step_suites = [s for s in wanted if s != LAYER_SUITE]
    if not wanted or step_suites:
        results = run_rows(list(suite_rows(step_suites or None)), workers=args.workers)
        rows += [_as_dict(r) for r in results]
    if args.json:
        sys.stdout.write(json.dumps({"rows": rows, "summary": _summary(rows)}, indent=1) + "\n")
    else:
        console = Console()
        console.print(_table(rows))
        console.print(_summary(rows))
    return 0 if all(r["ok"] for r in rows) else 1
