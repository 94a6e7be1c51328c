"""``clustersim compare``: comparison charts and a self-contained ``report.html`` from many reports.

Inputs, in any mix: a batch output folder (``results.csv`` and ``reports/<label>.json``, as written by
``clustersim batch``), a ``run --out`` folder (``report.json``), a folder of JSON reports, or JSON files
written by ``run --json``. Everything is read and checked before anything is drawn, so a bad input
(named in the one-line error) writes nothing.

Charts (each in every ``--format``): ``breakdown``, ``throughput_mfu``, ``memory``; ``scaling`` when one
model-on-cluster series has several GPU counts; ``heatmap`` of ``--metric`` over two axes, given with
``--x``/``--y`` or detected as the two swept axes of the batches' ``results.csv`` that vary. Plus
``comparison.csv`` (one row per point) and ``report.html``.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from simulator.errors import UserInputError
from simulator.report.schema import StepReport
from simulator.report.tabular import BASE_COLUMNS, Row

FORMATS = ("png", "svg")
DEFAULT_METRIC = "mfu"
MAX_BARS = 40  # bar charts show at most this many scenarios (the fastest); the table keeps every one
BATCH_CSV = "results.csv"
BATCH_REPORTS = "reports"
RUN_REPORT = "report.json"
_CSV_FIXED = ("label", "status", "reason")  # results.csv: these, the swept axes, then "scenario" ...
_LAYOUT_AXES = ("tp", "pp", "cp", "ep", "zero", "schedule", "micro_batch")  # parallelism.X / training.X


@dataclass
class Inputs:
    """Everything read from the inputs: reports with their swept values, and points without a report."""

    reports: list[StepReport] = field(default_factory=list)
    extras: list[dict[str, object]] = field(default_factory=list)  # per report: swept values, status
    missing: list[Row] = field(default_factory=list)  # infeasible / failed batch points
    axes: list[str] = field(default_factory=list)  # swept axes of the batches, first seen first


# --------------------------------------------------------------------------------------------- reading
def load_inputs(paths: Sequence[Path]) -> Inputs:
    """Read every input path (batch folder, run folder, folder of JSON reports, JSON file)."""
    inputs = Inputs()
    for path in paths:
        if path.is_dir() and (path / BATCH_CSV).is_file():
            _load_batch(path, inputs)
        elif path.is_dir() and (path / RUN_REPORT).is_file():
            _add_report(inputs, read_report(path / RUN_REPORT), {})
        elif path.is_dir():
            files = sorted(path.glob("*.json"))
            if not files:
                raise UserInputError(
                    "no results.csv (batch output), report.json (run --out) or *.json reports in the folder",
                    file=str(path),
                )
            for file in files:
                _add_report(inputs, read_report(file), {})
        elif path.is_file():
            _add_report(inputs, read_report(path), {})
        else:
            raise UserInputError("no such file or folder", file=str(path))
    return inputs


def _add_report(inputs: Inputs, report: StepReport, extra: dict[str, object]) -> None:
    inputs.reports.append(report)
    inputs.extras.append(extra)


def read_report(path: Path) -> StepReport:
    """One JSON report (``run --json`` output); a file that is not one is a UserInputError naming it."""
    try:
        return StepReport.model_validate_json(path.read_bytes())
    except OSError as e:
        raise UserInputError(f"cannot read the report: {e.strerror or e}", file=str(path)) from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        more = f" (and {e.error_count() - 1} more problems)" if e.error_count() > 1 else ""
        problem = f"{where}: {first['msg']}" if where else first["msg"]
        raise UserInputError(f"not a clustersim JSON report: {problem}{more}", file=str(path)) from None


def _load_batch(folder: Path, inputs: Inputs) -> None:
    """The points of one batch output folder: ok points with their report, the others as table rows."""
    csv_path = folder / BATCH_CSV
    try:
        with csv_path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserInputError(f"cannot read the batch results table: {e}", file=str(csv_path)) from None
    if header[: len(_CSV_FIXED)] != list(_CSV_FIXED) or "scenario" not in header:
        raise UserInputError("not a clustersim batch results table (see docs/batch.md)", file=str(csv_path))
    axes = header[len(_CSV_FIXED) : header.index("scenario")]
    names = {axis: column_name(axis) for axis in axes}
    inputs.axes += [names[a] for a in axes if names[a] not in inputs.axes]
    for row in rows:
        swept: dict[str, object] = {names[a]: parse_cell(row[a]) for a in axes if row[a] != ""}
        if row["status"] == "ok":
            report = read_report(folder / BATCH_REPORTS / f"{row['label']}.json")
            _add_report(inputs, report, {**swept, "status": "ok", "reason": ""})
        else:
            # the report's layout column too (parallelism.tp → tp), so that --x tp places the point
            layout = {
                a.rsplit(".", 1)[-1]: v for a, v in swept.items() if a.rsplit(".", 1)[-1] in _LAYOUT_AXES
            }
            inputs.missing.append(
                {
                    "scenario": row["label"],
                    **swept,
                    **layout,
                    "status": row["status"],
                    "reason": row["reason"],
                }
            )


def column_name(axis: str) -> str:
    """The table column of a swept axis: its key, unless that clashes with a standard report column."""
    return f"{axis} (swept)" if axis in ("scenario", *BASE_COLUMNS) else axis


def parse_cell(text: str) -> object:
    """A swept value from results.csv: numbers and booleans parsed (they are JSON there), anything else
    (strings, and lists or mappings, which stay text so that they can label a heat-map cell) as it is."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, int | float | bool) else text


# ----------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class HeatmapSpec:
    """The heat-map to draw: two row columns and the metric."""

    x: str
    y: str
    metric: str


def parse_formats(text: str) -> tuple[str, ...]:
    """``"png,svg"`` → ``("png", "svg")``; an unknown format is a UserInputError."""
    formats = tuple(dict.fromkeys(f.strip().lower() for f in text.split(",") if f.strip()))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserInputError(
            f"{text!r}: formats are a comma-separated subset of {','.join(FORMATS)}", field="--format"
        )
    return formats


def heatmap_spec(rows: Sequence[Row], axes: Sequence[str], args: argparse.Namespace) -> HeatmapSpec | None:
    """The heat-map asked for (``--x``/``--y``), or the two swept axes that vary; None when neither."""
    if (args.x is None) != (args.y is None):
        raise UserInputError("give both --x and --y (the two axes of the heat-map), or neither", field="--x")
    _check_column(rows, args.metric, "--metric", numeric=True)
    if args.x is not None:
        _check_column(rows, args.x, "--x")
        _check_column(rows, args.y, "--y")
        return HeatmapSpec(args.x, args.y, args.metric)
    varying = [a for a in axes if len({json.dumps(r.get(a), default=str) for r in rows if a in r}) > 1]
    return HeatmapSpec(varying[0], varying[1], args.metric) if len(varying) == 2 else None


def _check_column(rows: Sequence[Row], column: str, option: str, *, numeric: bool = False) -> None:
    """A UserInputError listing the usable columns when ``column`` is not one of ``rows``."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    if numeric:
        columns = [c for c in columns if any(_is_number(r.get(c)) for r in rows)]
    if column not in columns:
        kind = "numeric columns" if numeric else "columns"
        raise UserInputError(f"no column {column!r}; {kind}: {', '.join(columns)}", field=option)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def bar_subset(reports: Sequence[StepReport], limit: int = MAX_BARS) -> list[StepReport]:
    """At most ``limit`` reports for the bar charts: the fastest that fit memory, in the order given."""
    if len(reports) <= limit:
        return list(reports)
    ranked = sorted(range(len(reports)), key=lambda i: (reports[i].fits_memory, reports[i].tokens_per_s))
    keep = set(ranked[-limit:])
    return [r for i, r in enumerate(reports) if i in keep]


def scaling_series(report: StepReport) -> str:
    """The scaling curve a report belongs to: its model on its cluster (``llama3-70b on dgx-h100``), so
    that fabrics of one GPU type get a curve each."""
    return " on ".join(part for part in (report.model, report.cluster or report.gpu) if part) or "all"


def scaling_applies(reports: Sequence[StepReport]) -> bool:
    """Whether one scaling series has reports at several GPU counts (a curve to draw)."""
    counts: dict[str, set[int]] = {}
    for report in reports:
        counts.setdefault(scaling_series(report), set()).add(report.gpus)
    return any(len(gpus) > 1 for gpus in counts.values())


# ----------------------------------------------------------------------------------------------- drawing
ChartFn = Callable[[Path], Path]


def chart_plan(
    reports: Sequence[StepReport], rows: Sequence[Row], spec: HeatmapSpec | None, width_in: float
) -> dict[str, tuple[str, ChartFn]]:
    """File stem → (caption, function drawing the chart to a path) of every chart to draw."""
    from simulator.report import compare as charts

    bars = bar_subset(reports)
    note = (
        f" ({len(bars)} fastest of {len(reports)}; the table has them all)"
        if len(bars) < len(reports)
        else ""
    )
    plan: dict[str, tuple[str, ChartFn]] = {
        "breakdown": (
            f"Step time breakdown{note}",
            lambda p: charts.breakdown_comparison(bars, p, width_in),
        ),
        "throughput_mfu": (
            f"Throughput and MFU{note}",
            lambda p: charts.throughput_mfu_bars(bars, p, width_in),
        ),
    }
    if scaling_applies(reports):
        plan["scaling"] = (
            "Scaling with GPU count",
            lambda p: charts.scaling_curves(reports, p, scaling_series, width_in),
        )
    plan["memory"] = (f"Memory per GPU{note}", lambda p: charts.memory_comparison(bars, p, width_in))
    if spec is not None:
        caption = f"{spec.metric} by {spec.x} and {spec.y}"
        plan["heatmap"] = (caption, lambda p: charts.heatmap(rows, spec.x, spec.y, spec.metric, p))
    return plan


def compare_command(args: argparse.Namespace) -> int:
    """Load the inputs, draw every comparison chart, write comparison.csv and report.html; print a summary."""
    from simulator.report.html import write_html_report
    from simulator.report.tabular import reports_to_rows, write_csv

    formats = parse_formats(args.format)
    inputs = load_inputs([Path(p) for p in args.inputs])
    without = f"{plural(len(inputs.missing), 'point')} without a report (infeasible or failed)"
    if not inputs.reports:
        raise UserInputError(
            "no reports to compare" + (f": {without}" if inputs.missing else ""),
            file=", ".join(map(str, args.inputs)),
        )
    rows = [*reports_to_rows(inputs.reports, inputs.extras), *inputs.missing]
    spec = heatmap_spec(rows, inputs.axes, args)
    out_dir = Path(args.out)
    embedded: dict[str, Path] = {}
    plan = chart_plan(inputs.reports, rows, spec, args.width)
    for stem, (caption, draw) in plan.items():
        paths = {fmt: draw(out_dir / f"{stem}.{fmt}") for fmt in formats}
        embedded[caption] = paths.get("svg", paths[formats[0]])  # SVG stays sharp in the page
    write_csv(rows, out_dir / "comparison.csv")
    html = write_html_report(inputs.reports, rows, embedded, out_dir / "report.html", title=args.title)
    print(f"{plural(len(inputs.reports), 'report')} compared" + (f"; {without}" if inputs.missing else ""))
    print(f"charts: {', '.join(plan)} ({', '.join(formats)}) in {out_dir}")
    print(f"report: {html}")
    return 0


def plural(count: int, noun: str) -> str:
    """``"1 point"``, ``"3 points"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
