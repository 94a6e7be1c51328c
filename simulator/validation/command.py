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
NCCL_SUITE = "nccl-busbw"
NCCL_TOLERANCE = 0.10  # issue #3: large-message bus bandwidth within 10%
SPECIAL_SUITES = (LAYER_SUITE, NCCL_SUITE)


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


def _nccl_rows() -> list[dict[str, object]]:
    """nccl-tests bus bandwidths (the link calibration's fitting data, one point held out)."""
    from simulator.validation.nccl import nccl_rows

    out: list[dict[str, object]] = []
    for r in nccl_rows():
        err = float(r["error"])  # type: ignore[arg-type]
        out.append({"suite": NCCL_SUITE, "run": f"{r['system']} {r['gpus']} GPUs {r['op']} ({r['algorithm']})",
                    "role": "fit" if int(r["gpus"]) <= 16 else "held-out",  # type: ignore[call-overload]
                    "gpus": r["gpus"], "measured_gbps": r["measured_busbw_gbps"],
                    "predicted_gbps": r["predicted_busbw_gbps"], "error": err, "tolerance": NCCL_TOLERANCE,
                    "ok": abs(err) <= NCCL_TOLERANCE})  # fmt: skip
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


def _busbw_table(rows: list[dict[str, object]]) -> Table:
    t = Table(title="clustersim validate: predicted vs measured nccl-tests bus bandwidth")
    for col in ("run", "role", "measured", "predicted", "error", "within"):
        t.add_column(col, justify="left" if col in ("run", "role", "within") else "right")
    for r in rows:
        err = float(r["error"])  # type: ignore[arg-type]
        t.add_row(str(r["run"]), str(r["role"]), f"{float(r['measured_gbps']):.1f} GB/s",  # type: ignore[arg-type]
                  f"{float(r['predicted_gbps']):.1f} GB/s", f"{100 * err:+.1f}%",  # type: ignore[arg-type]
                  f"±{100 * float(r['tolerance']):.0f}% " + ("yes" if r["ok"] else "NO"))  # type: ignore[arg-type]  # fmt: skip
    return t


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
    step_suites = [s for s in wanted if s not in SPECIAL_SUITES]
    if not wanted or step_suites:
        results = run_rows(list(suite_rows(step_suites or None)), workers=args.workers)
        rows += [_as_dict(r) for r in results]
    nccl = _nccl_rows() if not wanted or NCCL_SUITE in wanted else []
    everything = rows + nccl
    if args.json:
        sys.stdout.write(json.dumps({"rows": everything, "summary": _summary(everything)}, indent=1) + "\n")
    else:
        console = Console()
        if rows:
            console.print(_table(rows))
        if nccl:
            console.print(_busbw_table(nccl))
        console.print(_summary(everything))
    return 0 if all(r["ok"] for r in everything) else 1
