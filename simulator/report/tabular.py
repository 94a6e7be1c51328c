"""Reports as spreadsheet rows: one row per simulated scenario, a stable column order, written as CSV.

(Named ``tabular`` so that it does not shadow the standard library's ``csv`` module.)

Columns, in order: ``scenario``, the swept values given as extra columns (in the order first seen), then
``BASE_COLUMNS``. Times are seconds per step, memory GiB per GPU, mfu/hfu fractions (0.45 = 45 %).

A column that holds a field of the JSON report is named by that field's path (``breakdown.compute_s``,
``comm.tp_s``, ``memory_gib_per_gpu.total``), as the batch's ``results.csv`` names it, and cells are written
as that file writes them (booleans ``true``/``false``, numbers in full): a batch's ``results.csv`` and the
``comparison.csv`` drawn from it agree column for column (issue #10, point 8). The layout's fields keep
their short names (``tp``, ``pp`` ...), which ``compare --x tp --y pp`` uses.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from simulator.report.schema import KernelClasses, StepReport
from simulator.report.style import COMM_KINDS, MEMORY_COMPONENTS, atomic_path

Row = dict[str, object]
BREAKDOWN_FIELDS = ("compute_s", "exposed_comm_s", "overlapped_comm_s", "bubble_s", "other_s")
KERNEL_CLASS_FIELDS: tuple[str, ...] = tuple(KernelClasses.model_fields)  # gemm_s, attention_s ...
# the report's cost fields (simulator/report/cost.py): empty cells where unknown (no cost.train_tokens)
COST_FIELDS = ("usd_per_million_tokens", "days", "usd")

BASE_COLUMNS: tuple[str, ...] = (
    "gpus",
    "gpu",
    "model",
    "layout",
    "tp",
    "pp",
    "dp",
    "cp",
    "ep",
    "zero",
    "schedule",
    "micro_batch",
    "micro_batches",
    "step_time_s",
    "tokens_per_s",
    "samples_per_s",
    "model_tflops_per_gpu",
    "mfu",
    "hfu",
    *COST_FIELDS,
    *(f"breakdown.{k}" for k in BREAKDOWN_FIELDS),
    *(f"comm.{k}_s" for k in COMM_KINDS),
    *(f"exposed_comm.{k}_s" for k in COMM_KINDS),
    *(f"kernel_classes.{k}" for k in KERNEL_CLASS_FIELDS),
    *(f"memory_gib_per_gpu.{m}" for m in MEMORY_COMPONENTS),
    "memory_gib_per_gpu.total",
    "fits_memory",
    "warnings",
)
_LAYOUT_COLUMNS = ("tp", "pp", "dp", "cp", "ep", "zero", "schedule", "micro_batch", "micro_batches")


def layout_label(report: StepReport) -> str:
    """A compact layout name for a table cell, e.g. ``"tp8 pp8 dp16 z1 1f1b"``; empty when unknown."""
    lay = report.layout
    if lay is None:
        return ""
    parts = [f"tp{lay.tp}", f"pp{lay.pp}", f"dp{lay.dp}"]
    parts += [f"cp{lay.cp}"] if lay.cp > 1 else []
    parts += [f"ep{lay.ep}"] if lay.ep > 1 else []
    parts += [f"z{lay.zero}", lay.schedule + (f"×{lay.virtual_stages}" if lay.virtual_stages > 1 else "")]
    return " ".join(parts)


def report_row(report: StepReport) -> Row:
    """The BASE_COLUMNS of one report (the scenario name and swept values are added by the caller)."""
    b, mem = report.breakdown, report.memory_gib_per_gpu
    row: Row = {"gpus": report.gpus, "gpu": report.gpu, "model": report.model, "layout": layout_label(report)}
    row.update({c: (getattr(report.layout, c) if report.layout is not None else "") for c in _LAYOUT_COLUMNS})
    row.update(
        step_time_s=report.step_time_s,
        tokens_per_s=report.tokens_per_s,
        samples_per_s=report.samples_per_s,
        model_tflops_per_gpu=report.model_tflops_per_gpu,
        mfu=report.mfu,
        hfu=report.hfu,
    )
    row.update({k: getattr(report, k) for k in COST_FIELDS})
    row.update({f"breakdown.{k}": getattr(b, k) for k in BREAKDOWN_FIELDS})
    row.update({f"comm.{k}_s": getattr(report.comm, f"{k}_s") for k in COMM_KINDS})
    row.update({f"exposed_comm.{k}_s": getattr(report.exposed_comm, f"{k}_s") for k in COMM_KINDS})
    row.update({f"kernel_classes.{k}": getattr(report.kernel_classes, k) for k in KERNEL_CLASS_FIELDS})
    row.update({f"memory_gib_per_gpu.{m}": getattr(mem, m) for m in MEMORY_COMPONENTS})
    row["memory_gib_per_gpu.total"] = mem.total
    row.update(fits_memory=report.fits_memory, warnings=len(report.warnings))
    return row


def reports_to_rows(
    reports: Sequence[StepReport], extra_columns: Sequence[Mapping[str, object]] | None = None
) -> list[Row]:
    """One row per report: ``scenario``, the report's swept values (``extra_columns[i]``, e.g.
    ``{"parallelism.tp": 4}``), then BASE_COLUMNS; every row has the same keys in the same order."""
    extras = list(extra_columns) if extra_columns is not None else [{} for _ in reports]
    if len(extras) != len(reports):
        raise ValueError(f"{len(extras)} sets of extra columns for {len(reports)} reports")
    extra_names: list[str] = []
    for mapping in extras:
        extra_names += [k for k in mapping if k not in extra_names]
    clash = sorted(set(extra_names) & {"scenario", *BASE_COLUMNS})
    if clash:
        raise ValueError(f"extra columns {clash} clash with standard report columns; rename them")
    rows: list[Row] = []
    for report, mapping in zip(reports, extras, strict=True):
        row: Row = {"scenario": report.scenario}
        row.update({name: mapping.get(name, "") for name in extra_names})
        row.update(report_row(report))
        rows.append(row)
    return rows


def write_csv(rows: Sequence[Mapping[str, object]], path: str | os.PathLike[str]) -> Path:
    """Write ``rows`` as CSV with a header (columns in first-seen order; missing cells empty), atomically."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    return Path(path)


def csv_cell(value: object) -> object:
    """A cell as the batch's results.csv writes it: booleans as JSON (``true``/``false``, not Python's
    ``True``), None as empty, everything else as it is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value
