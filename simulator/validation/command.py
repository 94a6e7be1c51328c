"""``clustersim validate``: predicted vs measured for every published run shipped with clustersim."""

from __future__ import annotations

import argparse
import statistics
import sys

from rich.console import Console
from rich.table import Table

from simulator.errors import ScenarioError, shorten
from simulator.files import finite_json
from simulator.report.progress import advance, reporting, stage
from simulator.validation.layer import korthikanti_cases, layer_times
from simulator.validation.suites import KINDS, Result, run_rows, select_rows, suite_rows, suite_specs

LAYER_SUITE = "korthikanti-2022-layer"
LAYER_TOLERANCE = 0.10
NCCL_SUITE = "nccl-busbw"
NCCL_TOLERANCE = 0.10  # issue #3: large-message bus bandwidth within 10%
SPECIAL_SUITES = (LAYER_SUITE, NCCL_SUITE)
PIPE_WIDTH = 200  # columns of the tables when stdout is not a terminal: the widest row needs ~160


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
                    "gpus": r["gpus"], "measured_GBps": r["measured_busbw_GBps"],
                    "predicted_GBps": r["predicted_busbw_GBps"], "error": err, "tolerance": NCCL_TOLERANCE,
                    "ok": abs(err) <= NCCL_TOLERANCE})  # fmt: skip
    return out


def _as_dict(r: Result) -> dict[str, object]:
    """One step-time row; a row that does not run has no prediction (null, never NaN, in the JSON)."""
    runs = r.runs
    return {"suite": r.row.suite, "run": r.row.name, "role": r.row.role, "gpus": r.gpus, "gpu": r.row.gpu,
            "classes": list(r.row.classes), "measured_s": r.row.measured_s,
            "predicted_s": r.predicted_s if runs else None, "error": r.error if runs else None,
            "tolerance": r.row.tolerance, "within": r.within,
            "memory_gib": round(r.memory_gib, 2) if runs else None, "capacity_gib": round(r.capacity_gib, 2),
            "fits_memory": r.fits if runs else None, "runs": runs, "failure": r.failure or None,
            "ok": r.ok}  # fmt: skip


def _err(r: dict[str, object]) -> float:
    return abs(float(r["error"]))  # type: ignore[arg-type]


def _summary(rows: list[dict[str, object]]) -> str:
    """Median and max |error| over the rows that run; how many are outside tolerance, do not fit in memory, or
    do not run."""
    ran = [r for r in rows if r.get("error") is not None]
    errs = [_err(r) for r in ran]
    outside = sum(not r.get("within", r["ok"]) for r in ran)
    memory = sum(r.get("fits_memory") is False for r in ran)
    missing = len(rows) - len(ran)
    if not ran:
        return f"{len(rows)} rows: none runs; {missing} do not run"
    worst = max(ran, key=_err)
    text = (f"{len(rows)} rows: median |error| {100 * statistics.median(errs):.1f}%, max {100 * max(errs):.1f}% "
            f"({worst['suite']} {worst['run']}); {outside} outside tolerance")  # fmt: skip
    if any("fits_memory" in r for r in rows):
        text += f"; {memory} memory failure{'s' if memory != 1 else ''} (predicted peak above the GPU's HBM)"
    if missing:
        text += f"; {missing} do not run"
    return text


def _class_order(rows: list[dict[str, object]]) -> list[str]:
    """Kinds first (KINDS order), then GPU types, then frameworks, each sorted."""
    seen = {c for r in rows for c in r.get("classes", ())}  # type: ignore[attr-defined]
    kinds = [k for k in KINDS if k in seen]
    return kinds + sorted(c for c in seen if c.startswith("gpu:")) + sorted(c for c in seen if c.startswith("framework:"))


def _group_stats(key: str, name: str, members: list[dict[str, object]]) -> dict[str, object]:
    """Rows, median and max |error| of those that run, outside tolerance, memory failures, not running."""
    ran = [r for r in members if r.get("error") is not None]
    errs = [_err(r) for r in ran]
    return {key: name, "rows": len(members), "running": len(ran),
            "median_abs_error": statistics.median(errs) if errs else None,
            "max_abs_error": max(errs) if errs else None,
            "outside_tolerance": sum(not r["within"] for r in ran),
            "memory_failures": sum(r["fits_memory"] is False for r in ran),
            "not_running": len(members) - len(ran)}  # fmt: skip


def _class_rows(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Per class: its statistics (``_group_stats``)."""
    return [
        _group_stats("class", cls, [r for r in rows if cls in r.get("classes", ())])  # type: ignore[operator]
        for cls in _class_order(rows)
    ]


def _suite_rows(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Per step-time suite, in run order: its statistics (the figures issue targets are stated in)."""
    names = list(dict.fromkeys(str(r["suite"]) for r in rows))
    return [_group_stats("suite", name, [r for r in rows if r["suite"] == name]) for name in names]


def _group_table(classes: list[dict[str, object]], key: str = "class") -> Table:
    t = Table(title=f"by {key}: |error| of predicted step time")
    for col in (key, "rows", "median", "max", "outside tol.", "memory fail", "do not run"):
        t.add_column(col, justify="left" if col == key else "right")
    for c in classes:
        med, mx = c["median_abs_error"], c["max_abs_error"]
        t.add_row(str(c[key]), str(c["rows"]), "-" if med is None else f"{100 * float(med):.1f}%",  # type: ignore[arg-type]
                  "-" if mx is None else f"{100 * float(mx):.1f}%", str(c["outside_tolerance"]),  # type: ignore[arg-type]
                  str(c["memory_failures"]), str(c["not_running"]))  # fmt: skip
    return t


def _busbw_table(rows: list[dict[str, object]]) -> Table:
    t = Table(title="clustersim validate: predicted vs measured nccl-tests bus bandwidth")
    for col in ("run", "role", "measured", "predicted", "error", "within"):
        t.add_column(col, justify="left" if col in ("run", "role", "within") else "right")
    for r in rows:
        err = float(r["error"])  # type: ignore[arg-type]
        t.add_row(str(r["run"]), str(r["role"]), f"{float(r['measured_GBps']):.1f} GB/s",  # type: ignore[arg-type]
                  f"{float(r['predicted_GBps']):.1f} GB/s", f"{100 * err:+.1f}%",  # type: ignore[arg-type]
                  f"±{100 * float(r['tolerance']):.0f}% " + ("yes" if r["ok"] else "NO"))  # type: ignore[arg-type]  # fmt: skip
    return t


def _fits(r: dict[str, object]) -> str:
    if "fits_memory" not in r:  # layer-time rows: no memory
        return ""
    if r["fits_memory"] is None:
        return "-"
    mem, cap = float(r["memory_gib"]), float(r["capacity_gib"])  # type: ignore[arg-type]
    return f"{'yes' if r['fits_memory'] else 'NO'} {mem:.1f}/{cap:.1f} GiB"


def _table(rows: list[dict[str, object]]) -> Table:
    t = Table(title="clustersim validate: predicted vs measured step time")
    for col in ("suite", "run", "role", "GPUs", "measured", "predicted", "error", "within", "fits memory"):
        t.add_column(col, justify="right" if col in ("GPUs", "measured", "predicted", "error") else "left")
    for r in rows:
        tol = f"±{100 * float(r['tolerance']):.0f}% "  # type: ignore[arg-type]
        if r.get("error") is None:
            t.add_row(str(r["suite"]), str(r["run"]), str(r["role"]), f"{r['gpus']:,}", _fmt(float(r["measured_s"])),  # type: ignore[arg-type]
                      "-", "-", tol + "does not run", "-")  # fmt: skip
            continue
        err = float(r["error"])  # type: ignore[arg-type]
        within = r.get("within", r["ok"])
        t.add_row(str(r["suite"]), str(r["run"]), str(r["role"]), f"{r['gpus']:,}", _fmt(float(r["measured_s"])),  # type: ignore[arg-type]
                  _fmt(float(r["predicted_s"])), f"{100 * err:+.1f}%",  # type: ignore[arg-type]
                  tol + ("yes" if within else "NO"), _fits(r))  # fmt: skip
    return t


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def validate_command(args: argparse.Namespace) -> int:
    """Run the suites, print the table and a summary line; exit 1 when a row is outside its tolerance."""
    wanted = list(args.suite)
    valid = [*suite_specs(), *SPECIAL_SUITES]
    for name in wanted:  # every valid suite in the error, the step-time and the special ones (#12)
        if name not in valid:
            raise ScenarioError(f"unknown suite {shorten(name)}; valid: {', '.join(valid)}", field="--suite")
    classes = list(getattr(args, "cls", None) or [])
    rows: list[dict[str, object]] = []
    # The layer-time and bus-bandwidth suites have no classes: a --class filter leaves them out unless named.
    if (not wanted and not classes) or LAYER_SUITE in wanted:
        rows += _layer_rows()
    step_suites = [s for s in wanted if s not in SPECIAL_SUITES]
    step: list[dict[str, object]] = []
    if not wanted or step_suites:
        selected = select_rows(list(suite_rows(step_suites or None)), classes)
        with reporting("validate"):
            stage(f"simulating {len(selected)} published runs", total=len(selected))
            results = run_rows(selected, workers=args.workers, on_result=lambda _: advance())
        step = [_as_dict(r) for r in results]
        rows += step
    nccl = _nccl_rows() if (not wanted and not classes) or NCCL_SUITE in wanted else []
    everything = rows + nccl
    by_class, by_suite = _class_rows(step), _suite_rows(step)
    failures = [r for r in step if r.get("failure")]
    if args.json:
        doc = {"rows": everything, "suites": by_suite, "classes": by_class, "summary": _summary(everything) if everything else "0 rows"}
        sys.stdout.write(finite_json(doc, indent=1) + "\n")
    else:
        # Not a terminal (a pipe, a file): wide enough that no run name or column is cut (rich would squeeze to 80)
        console = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)
        if rows:
            console.print(_table(rows))
        for r in failures:  # the reason in full, one line each (a table cell would wrap or be cut)
            console.print(f"does not run: {r['suite']} {r['run']}: {r['failure']}", soft_wrap=True)
        if by_suite:
            console.print(_group_table(by_suite, "suite"))
        if by_class:
            console.print(_group_table(by_class))
        if nccl:
            console.print(_busbw_table(nccl))
        console.print(_summary(everything) if everything else "0 rows")
    return 0 if all(r["ok"] for r in everything) else 1
