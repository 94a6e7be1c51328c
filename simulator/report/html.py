"""A self-contained ``report.html`` for sharing a decision: summary, charts and a sortable results table.

Everything is inside the one file: charts as ``data:`` URIs (SVG or PNG, base64), styles and a few lines
of script inline; no external resource is referenced, so it opens offline and survives being mailed.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

from simulator.report.schema import StepReport
from simulator.report.style import CAPACITY_COLOR, format_percent, format_seconds, write_text_atomic

ChartList = Sequence[str | os.PathLike[str]] | Mapping[str, str | os.PathLike[str]]

_MIME = {".svg": "image/svg+xml", ".png": "image/png"}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.muted { color: #666; } .bad { color: BAD_COLOR; font-weight: 600; }
figure { margin: 1rem 0 2rem; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9rem; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: .8rem; }
th, td { padding: .25rem .5rem; border-bottom: 1px solid #e4e4e4; white-space: nowrap; text-align: right; }
th { position: sticky; top: 0; background: #f4f4f4; cursor: pointer; user-select: none; }
th:first-child, td:first-child { text-align: left; position: sticky; left: 0; background: #fff; }
th:first-child { background: #f4f4f4; z-index: 1; }
th[data-dir="asc"]::after { content: " ▲"; } th[data-dir="desc"]::after { content: " ▼"; }
tr:hover td { background: #f7fbff; }
""".replace("BAD_COLOR", CAPACITY_COLOR)

# Click a header to sort by that column; click again to reverse. Numbers sort as numbers (data-v), text
# naturally ("pp=2" before "pp=16": digit runs compare as numbers), empty cells last either way.
_JS = """
const collator = new Intl.Collator(undefined, {numeric: true, sensitivity: "base"});
document.querySelectorAll("table.sortable th").forEach((th, col) => th.addEventListener("click", () => {
  const table = th.closest("table"), body = table.tBodies[0], asc = th.dataset.dir !== "asc";
  table.querySelectorAll("th").forEach(h => delete h.dataset.dir);
  th.dataset.dir = asc ? "asc" : "desc";
  const key = td => { const v = (td.dataset.v ?? td.textContent).trim(), n = Number(v);
                      return v === "" ? null : !isNaN(n) ? n : v; };
  const cmp = (a, b) => typeof a === typeof b
    ? (typeof a === "number" ? a - b : collator.compare(a, b)) : (typeof a === "number" ? -1 : 1);
  const rows = Array.from(body.rows).map(row => [key(row.cells[col]), row]);
  rows.sort(([a], [b]) => a === null || b === null ? (a === null) - (b === null) : (asc ? 1 : -1) * cmp(a, b))
      .forEach(([, row]) => body.appendChild(row));
}));
"""

# The columns a buyer decides on come first, in this order, when the rows have them: what the step takes,
# what it trains per second, how well it uses the GPUs, and what a run costs in money and days.
DECISION_COLUMNS: tuple[str, ...] = (
    "scenario",
    "step_time_s",
    "tokens_per_s",
    "mfu",
    "usd_per_million_tokens",
    "usd",
    "days",
    "fits_memory",
)


def write_html_report(
    reports: Sequence[StepReport],
    rows: Sequence[Mapping[str, object]],
    charts: ChartList,
    path: str | os.PathLike[str],
    title: str = "clustersim report",
) -> Path:
    """Write one self-contained HTML page: a summary of ``reports``, the ``charts`` (PNG/SVG files, or
    a caption → file mapping) embedded inline, and ``rows`` as a table sortable by clicking a header.
    Written atomically; returns the path."""
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<link rel="icon" href="data:,">',  # no favicon request: the page references nothing outside it
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        summary_html(reports),
        charts_html(charts),
        results_table_html(rows),
        warnings_html(reports),
        f"<script>{_JS}</script></body></html>",
    ]
    return write_text_atomic(path, "\n".join(p for p in parts if p) + "\n")


def summary_html(reports: Sequence[StepReport]) -> str:
    """A few sentences: how many scenarios, the fastest that fits memory, how many do not fit."""
    if not reports:
        return '<p class="muted">No reports.</p>'
    fitting = [r for r in reports if r.fits_memory]
    lines = [f"{len(reports)} scenario{'s' if len(reports) != 1 else ''} simulated."]
    if fitting:
        best = max(fitting, key=lambda r: r.tokens_per_s)
        lines.append(
            f"Fastest that fits memory: <b>{escape(best.scenario)}</b>: {best.tokens_per_s:,.0f} tokens/s, "
            f"step {escape(format_seconds(best.step_time_s))}, MFU {format_percent(best.mfu)} on {best.gpus:,} GPUs."
        )
    unfit = len(reports) - len(fitting)
    if unfit:
        lines.append(f'<span class="bad">{unfit} do not fit in GPU memory (NOT FITS).</span>')
    return "<p>" + "<br>".join(lines) + "</p>"


def charts_html(charts: ChartList) -> str:
    """Each chart as a figure with an embedded image and a caption."""
    items = (
        list(charts.items())
        if isinstance(charts, Mapping)
        else [(Path(c).stem.replace("_", " "), c) for c in charts]
    )
    if not items:
        return ""
    figures = [
        f'<figure><img alt="{escape(caption)}" src="{chart_data_uri(chart)}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
        for caption, chart in items
    ]
    return "<h2>Charts</h2>\n" + "\n".join(figures)


def chart_data_uri(path: str | os.PathLike[str]) -> str:
    """A chart file as a ``data:`` URI (SVG or PNG), so the page needs no other file."""
    suffix = Path(path).suffix.lower()
    if suffix not in _MIME:
        raise ValueError(f"chart {str(path)!r} must be .svg or .png to embed")
    payload = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f"data:{_MIME[suffix]};base64,{payload}"


def results_table_html(rows: Sequence[Mapping[str, object]]) -> str:
    """The results as an HTML table that sorts on a header click: the DECISION_COLUMNS that some row knows
    first (the run's ``usd`` and ``days`` only where a scenario gave ``cost.train_tokens``), then the
    others in first-seen order."""
    if not rows:
        return ""
    seen: list[str] = []
    for row in rows:
        seen += [k for k in row if k not in seen]
    known = [c for c in DECISION_COLUMNS if any(row.get(c) not in ("", None) for row in rows)]
    columns = known + [c for c in seen if c not in DECISION_COLUMNS]
    head = "".join(f'<th title="click to sort">{escape(c)}</th>' for c in columns)
    body = "\n".join("<tr>" + "".join(_cell(c, row.get(c, "")) for c in columns) + "</tr>" for row in rows)
    return (
        '<h2>Results</h2><p class="muted">Click a column header to sort.</p>'
        f'<div class="scroll"><table class="sortable"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table></div>'
    )


def _cell(column: str, value: object) -> str:
    """One table cell: readable text, with the raw number in ``data-v`` for sorting."""
    if value == "" or value is None:  # e.g. the metrics of an infeasible point: nothing to show
        return "<td></td>"
    if isinstance(value, bool) or column == "fits_memory":
        fits = value if isinstance(value, bool) else str(value).lower() not in ("false", "0", "no")
        return f'<td data-v="{int(fits)}">yes</td>' if fits else '<td data-v="0" class="bad">NOT FITS</td>'
    if isinstance(value, float):
        shown = format_percent(value) if column in ("mfu", "hfu") else _number_text(value)
        return f'<td data-v="{value!r}">{escape(shown)}</td>'
    return f"<td>{escape(str(value))}</td>"


def _number_text(value: float) -> str:
    """A float for reading: thousands separators for big values, four significant digits otherwise."""
    return f"{value:,.0f}" if abs(value) >= 1e4 else f"{value:.4g}"


def warnings_html(reports: Sequence[StepReport]) -> str:
    """Every scenario's warnings, in one collapsed section; empty when there are none."""
    items = [f"<li><b>{escape(r.scenario)}</b>: {escape(w)}</li>" for r in reports for w in r.warnings]
    if not items:
        return ""
    return f"<h2>Warnings</h2><details><summary>{len(items)} warnings</summary><ul>{''.join(items)}</ul></details>"
