"""Comparison charts over many reports (a batch or a sweep), PNG or SVG by the path's suffix.

Scenarios are drawn in the order given (first on top); the palette is the one of ``style.py``, so a
breakdown component has the same colour here as in the single-step charts.
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, NullLocator

from simulator.report.charts import draw_segments, hidden_segments, legend_handles, step_segments
from simulator.report.schema import StepReport
from simulator.report.style import (
    CAPACITY_COLOR,
    MEMORY_COLORS,
    MEMORY_COMPONENTS,
    SERIES_CYCLE,
    format_percent,
    format_seconds,
    hbm_capacity_gib,
    new_figure,
    save_figure,
    text_color_on,
    time_unit,
)

THROUGHPUT_COLOR = "#34495E"
MFU_COLOR = "#1F9E89"
NOT_FIT_COLOR = "#BBBBBB"
_FRACTION_METRICS = ("mfu", "hfu")
SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X")  # the scaling chart's series: marker ...
SERIES_LINES = ("-", "--", "-.")  # ... and line style, with the colour (linear scaling is dotted)
_SERIES_NUDGE = 0.025  # sideways offset between series, a fraction of the GPU count (log axis)
_TITLE_FONT_PT = 11
_CHAR_WIDTH_EM = 0.6  # mean width of a character of the default sans-serif font, in ems (for wrapping titles)
CHART_WIDTH_IN = 12.0  # default width of the bar and scaling charts; about 8 reads well at a README's width
_TICK_CHARS_FLAT = 10  # heat-map x labels longer than this are drawn slanted so that they do not overlap


def scenario_labels(reports: Sequence[StepReport]) -> list[str]:
    """One label per report: its scenario name, with ``#2``, ``#3`` ... appended to repeated names."""
    seen: dict[str, int] = {}
    labels = []
    for report in reports:
        seen[report.scenario] = seen.get(report.scenario, 0) + 1
        labels.append(
            report.scenario if seen[report.scenario] == 1 else f"{report.scenario} #{seen[report.scenario]}"
        )
    return labels


def _bar_axes(fig_width: float, count: int, per_bar_in: float = 0.42) -> tuple[Figure, Axes]:
    """A figure sized for ``count`` horizontal bars, and its single axes."""
    fig = new_figure(fig_width, 1.5 + per_bar_in * max(count, 1))
    return fig, fig.add_subplot()


def _label_scenarios(ax: Axes, labels: list[str]) -> None:
    """Scenario names on the y axis, first scenario on top."""
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.6)


def fit_to_width(fig: Figure) -> None:
    """Lay ``fig`` out, then wrap the left titles that would overrun its right edge and widen each axes'
    x range so that the left-aligned values written right of the bars end inside it (any figure width)."""
    fig.draw_without_rendering()
    for ax in fig.axes:
        _wrap_left_title(ax)
        _fit_right_texts(ax)


def _wrap_left_title(ax: Axes) -> None:
    """Re-set a left title on several lines when it is wider than its room: from the axes' left edge to
    the next titled axes on the right (a side-by-side panel), or to the figure's edge."""
    title = ax.get_title(loc="left")
    if not title:
        return
    fig = ax.figure
    right_px = min(
        [o.bbox.x0 for o in fig.axes if o.get_title(loc="left") and o.bbox.x0 > ax.bbox.x1],
        default=fig.bbox.x1,
    )
    room_pt = (right_px - ax.bbox.x0) * 72 / fig.dpi
    chars = max(int(room_pt / (_CHAR_WIDTH_EM * _TITLE_FONT_PT)), 10)
    if len(title) > chars:
        ax.set_title(textwrap.fill(title, chars), loc="left", fontsize=_TITLE_FONT_PT)


def _fit_right_texts(ax: Axes) -> None:
    """Extend the x range so that every left-aligned text (anchored in data coordinates) ends inside."""
    if ax.get_xscale() != "linear":
        return
    x0, x1 = ax.get_xlim()
    width_px, needed = ax.bbox.width, x1
    for text in ax.texts:
        if text.get_horizontalalignment() != "left":
            continue
        room_px = 0.98 * width_px - text.get_window_extent().width
        if room_px > 0:  # anchor at (x - x0) / (X - x0) of the width, then the text: solve for X
            needed = max(needed, x0 + (text.get_position()[0] - x0) * width_px / room_px)
    ax.set_xlim(x0, needed)


def breakdown_comparison(
    reports: Sequence[StepReport], path: str | os.PathLike[str], width_in: float = CHART_WIDTH_IN
) -> Path:
    """Stacked step-time breakdown per scenario (hidden comm as a thin hatched bar under each), with
    step time and MFU at the end of each bar. Returns the path."""
    fig, ax = _bar_axes(width_in, len(reports), 0.55)
    longest = max((r.step_time_s for r in reports), default=0.0)
    unit, scale = time_unit(longest)
    segments = []
    for y, report in enumerate(reports):
        step, hidden = step_segments(report), hidden_segments(report)
        segments += step + hidden
        draw_segments(ax, y - 0.08, step, scale, 0.5, 0.0)
        draw_segments(ax, y + 0.3, hidden, scale, 0.14, 0.0)
        note = f"  {format_seconds(report.step_time_s, (unit, scale))} · MFU {format_percent(report.mfu)}"
        ax.text(
            report.step_time_s * scale,
            y - 0.08,
            note + ("" if report.fits_memory else " · NOT FITS"),
            va="center",
            fontsize=8,
            color="black" if report.fits_memory else CAPACITY_COLOR,
        )
    _label_scenarios(ax, scenario_labels(reports))
    ax.set_xlim(0, longest * scale * 1.3 if longest > 0 else 1)
    ax.set_xlabel(f"time per step ({unit})")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(
        "Step time breakdown per scenario (hatched: communication hidden under compute)",
        loc="left",
        fontsize=_TITLE_FONT_PT,
    )
    ax.legend(
        handles=legend_handles(segments),
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
        fontsize=8,
    )
    fit_to_width(fig)
    return save_figure(fig, path)


def throughput_mfu_bars(
    reports: Sequence[StepReport], path: str | os.PathLike[str], width_in: float = CHART_WIDTH_IN
) -> Path:
    """Tokens/s and MFU per scenario side by side (HFU as a tick); scenarios that do not fit memory are
    drawn grey and marked. Returns the path."""
    fig = new_figure(width_in, 1.5 + 0.42 * max(len(reports), 1))
    ax_tok, ax_mfu = fig.subplots(1, 2, sharey=True)
    ys = np.arange(len(reports))
    fits = [r.fits_memory for r in reports]
    tokens = [r.tokens_per_s for r in reports]
    mfus = [r.mfu * 100 for r in reports]
    hfus = [r.hfu * 100 for r in reports]
    ax_tok.barh(ys, tokens, color=[THROUGHPUT_COLOR if f else NOT_FIT_COLOR for f in fits], height=0.65)
    ax_mfu.barh(ys, mfus, color=[MFU_COLOR if f else NOT_FIT_COLOR for f in fits], height=0.65)
    ax_mfu.scatter(hfus, ys, marker="|", s=200, color="black", zorder=3)
    for y, (tok, mfu, hfu, fit) in enumerate(zip(tokens, mfus, hfus, fits, strict=True)):
        note = f" {_short_number(tok)}" + ("" if fit else "  NOT FITS")
        ax_tok.text(tok, y, note, va="center", fontsize=8, color="black" if fit else CAPACITY_COLOR)
        ax_mfu.text(max(mfu, hfu), y, f"  {mfu:.1f}%", va="center", fontsize=8)  # right of the HFU tick
    _label_scenarios(ax_tok, scenario_labels(reports))
    ax_tok.set_xlim(0, max(tokens, default=1) * 1.3 or 1)
    ax_tok.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: _short_number(value)))
    ax_mfu.set_xlim(0, max([*mfus, *hfus, 1]) * 1.2)
    _finish_axes(ax_tok, "throughput (tokens/s)", "Throughput")
    _finish_axes(ax_mfu, "MFU (% of dense peak)", "Model FLOPs utilisation")
    handles: list[Artist] = [
        Line2D([], [], marker="|", linestyle="none", color="black", markersize=12, label="HFU")
    ]
    if not all(fits):
        handles.append(Patch(color=NOT_FIT_COLOR, label="does not fit memory"))
    ax_mfu.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
    fit_to_width(fig)
    return save_figure(fig, path)


def _finish_axes(ax: Axes, xlabel: str, title: str) -> None:
    """X label, left-aligned title and a light vertical grid behind the bars."""
    ax.set_xlabel(xlabel)
    ax.set_title(title, loc="left", fontsize=11)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def default_series(report: StepReport) -> str:
    """The default series of a scaling curve: model on GPU type (what stays fixed while GPUs grow)."""
    return " on ".join(p for p in (report.model, report.gpu) if p) or "all"


def scaling_curves(
    reports: Sequence[StepReport],
    path: str | os.PathLike[str],
    series: Callable[[StepReport], str] | Sequence[str] | None = None,
    width_in: float = CHART_WIDTH_IN,
) -> Path:
    """Tokens/s and MFU against GPU count, one line per series key (``series``: a function of the
    report, or one key per report; default model on GPU). With several reports per GPU count in a series
    the fastest one that fits memory is drawn. Dotted: linear scaling from the smallest point. Each series
    has its own colour, marker and line style, and is nudged sideways so that coinciding series all show."""
    keys = _series_keys(reports, series)
    fig = new_figure(width_in, 4.6)
    ax_tok, ax_mfu = fig.subplots(1, 2)
    names = sorted(set(keys), key=keys.index)
    for n, name in enumerate(names):
        points = _best_per_gpu_count([r for r, k in zip(reports, keys, strict=True) if k == name])
        color = SERIES_CYCLE[n % len(SERIES_CYCLE)]
        # Series that coincide (two fabrics with the same throughput) must stay distinguishable: each has
        # its own marker and line style, and its points are nudged sideways by a few percent of the GPU
        # count on the log axis (GPU counts are labelled on the ticks, not read off the points).
        style = {
            "marker": SERIES_MARKERS[n % len(SERIES_MARKERS)],
            "linestyle": SERIES_LINES[n % len(SERIES_LINES)],
        }
        nudge = 1.0 + _SERIES_NUDGE * (n - (len(names) - 1) / 2)
        gpus = [p.gpus * nudge for p in points]
        ax_tok.plot(gpus, [p.tokens_per_s for p in points], color=color, label=name, markersize=6, **style)
        ax_tok.plot(
            gpus,
            [points[0].tokens_per_s * g / gpus[0] for g in gpus],
            linestyle=":",
            linewidth=1.0,
            color=color,
            alpha=0.55,
        )
        ax_mfu.plot(gpus, [p.mfu * 100 for p in points], color=color, label=name, markersize=6, **style)
        for g, p in zip(gpus, points, strict=True):
            if not p.fits_memory:
                for ax, value in ((ax_tok, p.tokens_per_s), (ax_mfu, p.mfu * 100)):
                    ax.scatter([g], [value], marker="x", s=70, color=CAPACITY_COLOR, zorder=4)
    _scaling_axes(ax_tok, ax_mfu, sorted({r.gpus for r in reports}), any(not r.fits_memory for r in reports))
    fit_to_width(fig)
    return save_figure(fig, path)


def _series_keys(
    reports: Sequence[StepReport], series: Callable[[StepReport], str] | Sequence[str] | None
) -> list[str]:
    """The series key of every report."""
    if series is None:
        return [default_series(r) for r in reports]
    if callable(series):
        return [series(r) for r in reports]
    if len(series) != len(reports):
        raise ValueError(f"{len(series)} series keys for {len(reports)} reports")
    return [str(s) for s in series]


def _best_per_gpu_count(reports: list[StepReport]) -> list[StepReport]:
    """One report per GPU count (the fastest that fits memory, else the fastest), by GPU count."""
    best: dict[int, StepReport] = {}
    for report in reports:
        have = best.get(report.gpus)
        if have is None or (report.fits_memory, report.tokens_per_s) > (have.fits_memory, have.tokens_per_s):
            best[report.gpus] = report
    return [best[g] for g in sorted(best)]


def _scaling_axes(ax_tok: Axes, ax_mfu: Axes, gpu_counts: list[int], mark_unfit: bool) -> None:
    """Axes scales, ticks at the simulated GPU counts, labels, titles and legend of the scaling chart."""
    short = FuncFormatter(lambda value, _pos: _short_number(value))
    ax_tok.set_yscale("log")
    ax_tok.yaxis.set_major_formatter(short)
    ax_tok.yaxis.set_minor_formatter(short)
    ax_tok.tick_params(axis="y", which="minor", labelsize=7)
    ax_mfu.set_ylim(bottom=0)
    for ax in (ax_tok, ax_mfu):
        ax.set_xscale("log", base=2)
        ax.set_xticks(gpu_counts, [f"{g:,}" for g in gpu_counts])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("GPUs")
        ax.grid(alpha=0.3, which="both")
    ax_tok.set_title("Throughput vs cluster size (dotted: linear scaling)", loc="left", fontsize=11)
    ax_mfu.set_title("MFU vs cluster size", loc="left", fontsize=11)
    ax_tok.set_ylabel("throughput (tokens/s)")
    ax_mfu.set_ylabel("MFU (% of dense peak)")
    handles, _ = ax_mfu.get_legend_handles_labels()
    if mark_unfit:
        handles += [
            Line2D([], [], marker="x", linestyle="none", color=CAPACITY_COLOR, label="does not fit memory")
        ]
    ax_mfu.legend(handles=handles, fontsize=8, loc="best")


def memory_comparison(
    reports: Sequence[StepReport], path: str | os.PathLike[str], width_in: float = CHART_WIDTH_IN
) -> Path:
    """Memory per GPU per scenario, stacked by component, with each scenario's HBM capacity marked (red
    tick) and NOT FITS noted. Returns the path."""
    fig, ax = _bar_axes(width_in, len(reports))
    widest = max((_memory_bar(ax, y, report) for y, report in enumerate(reports)), default=0.0)
    _label_scenarios(ax, scenario_labels(reports))
    ax.set_xlim(0, widest * 1.3 if widest > 0 else 1)
    _finish_axes(ax, "memory per GPU (GiB)", "Memory per GPU per scenario (most loaded rank)")
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))  # one legend entry per label, not per bar
    ax.legend(
        unique.values(),
        unique.keys(),
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
        fontsize=8,
    )
    fit_to_width(fig)
    return save_figure(fig, path)


def _memory_bar(ax: Axes, y: float, report: StepReport) -> float:
    """Draw one scenario's stacked memory bar, capacity tick and total; returns the extent drawn (GiB)."""
    mem, left = report.memory_gib_per_gpu, 0.0
    for name in MEMORY_COMPONENTS:
        value = getattr(mem, name)
        ax.barh(y, value, left=left, height=0.6, color=MEMORY_COLORS[name], edgecolor="white", label=name)
        left += value
    capacity = hbm_capacity_gib(report.gpu) or 0.0
    if capacity:
        label = f"HBM capacity {capacity:,.0f} GiB"  # one legend entry per distinct capacity
        ax.vlines(capacity, y - 0.42, y + 0.42, color=CAPACITY_COLOR, linewidth=2.2, label=label)
    # The total is the bar's, written at the bar's end and named "used", so that it never reads as the
    # capacity (issue #10, point 7: beside the capacity tick a fitting bar's total looked like the HBM size);
    # the capacity is named in the legend.
    note = f" used {mem.total:,.1f} GiB" + ("" if report.fits_memory else " · NOT FITS")
    color = "black" if report.fits_memory else CAPACITY_COLOR
    ax.text(mem.total, y, note, va="center", fontsize=8, color=color, zorder=5,
            bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.8, "pad": 0.5})  # fmt: skip
    return max(mem.total, left, capacity)


def metric_kind(metric: str) -> str:
    """What a column measures: ``"fraction"`` (mfu, hfu), ``"rate"`` (…per_s), ``"time"`` (…_s),
    ``"memory"`` (``memory_gib_per_gpu.…``, …_gib) or ``"number"``."""
    if metric in _FRACTION_METRICS:
        return "fraction"
    if metric.endswith("per_s"):
        return "rate"
    if metric.endswith("_s"):
        return "time"
    return "memory" if metric.startswith("memory_gib_per_gpu.") or metric.endswith("_gib") else "number"


def lower_is_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (times and memory); others are better higher."""
    return metric_kind(metric) in ("time", "memory")


def heatmap(
    rows: Sequence[Mapping[str, object]], x_axis: str, y_axis: str, metric: str, path: str | os.PathLike[str]
) -> Path:
    """``metric`` over two swept columns of ``rows`` (from ``reports_to_rows``) as an annotated grid.

    Where several rows share a cell, the best value is shown (lowest for times and memory, highest
    otherwise). Cells whose best row does not fit memory are greyed out (except for memory metrics); a
    cell without a value shows the ``status`` of its rows (``infeasible``, ``failed``) or a dash.
    Returns the path.
    """
    xs, ys, values, fits = heatmap_grid(rows, x_axis, y_axis, metric)
    fig = new_figure(max(6.0, 1.1 * len(xs) + 3.0), max(3.2, 0.55 * len(ys) + 2.0))
    ax = fig.add_subplot()
    shown = np.where(fits | (metric_kind(metric) == "memory"), values, np.nan)
    cmap = matplotlib.colormaps["viridis_r" if lower_is_better(metric) else "viridis"].with_extremes(
        bad="#EEEEEE"
    )
    image = ax.imshow(np.ma.masked_invalid(shown), cmap=cmap, aspect="auto")
    _annotate_cells(ax, values, shown, fits, metric, image, empty_cell_notes(rows, xs, ys, x_axis, y_axis))
    x_labels = [tick_label(x) for x in xs]
    long_labels = max(map(len, x_labels)) > _TICK_CHARS_FLAT
    ax.set_xticks(
        range(len(xs)), x_labels, rotation=20 if long_labels else 0, ha="right" if long_labels else "center"
    )
    ax.set_yticks(range(len(ys)), [tick_label(y) for y in ys])
    ax.set_xlabel(x_axis)
    ax.set_ylabel(y_axis)
    better = "lower is better" if lower_is_better(metric) else "higher is better"
    if not fits.all() and metric_kind(metric) != "memory":
        better += "; grey: does not fit memory"
    ax.set_title(f"{metric} by {x_axis} and {y_axis} ({better})", loc="left", fontsize=11)
    fraction = metric_kind(metric) == "fraction"
    ticks = FuncFormatter(lambda v, _p: f"{v * 100:.3g}%" if fraction else _short_number(v))
    fig.colorbar(image, ax=ax, label=_metric_label(metric), format=ticks)
    fit_to_width(fig)
    return save_figure(fig, path)


def _placed(value: object) -> bool:
    """Whether a row's axis value can place it on a heat-map axis (not missing, not empty)."""
    return value is not None and value != ""


def heatmap_grid(
    rows: Sequence[Mapping[str, object]], x_axis: str, y_axis: str, metric: str
) -> tuple[list[object], list[object], np.ndarray, np.ndarray]:
    """Sorted x and y values, the best ``metric`` per cell (NaN where no row), and whether it fits."""
    if not rows:
        raise ValueError("no rows to draw a heatmap from")
    for column in (x_axis, y_axis, metric):
        if not any(column in row for row in rows):
            raise ValueError(f"no column {column!r} in the rows; have {', '.join(map(str, rows[0]))}")
    # A row without a value on an axis (an infeasible batch point has only its swept columns, e.g.
    # parallelism.tp, not the report's tp) has no cell: it is left out, not drawn as a "None" row.
    rows = [row for row in rows if _placed(row.get(x_axis)) and _placed(row.get(y_axis))]
    if not rows:
        raise ValueError(f"no row has both {x_axis!r} and {y_axis!r}")
    xs = sorted({row.get(x_axis) for row in rows}, key=_axis_sort_key)
    ys = sorted({row.get(y_axis) for row in rows}, key=_axis_sort_key)
    values = np.full((len(ys), len(xs)), np.nan)
    fits = np.ones((len(ys), len(xs)), dtype=bool)
    sign = -1.0 if lower_is_better(metric) else 1.0
    for row in rows:
        value = _as_float(row.get(metric))
        if value is None:
            continue
        i, j = ys.index(row.get(y_axis)), xs.index(row.get(x_axis))
        if math.isnan(values[i, j]) or sign * value > sign * values[i, j]:
            values[i, j] = value
            fits[i, j] = _as_bool(row.get("fits_memory", True))
    return xs, ys, values, fits


def empty_cell_notes(
    rows: Sequence[Mapping[str, object]], xs: list[object], ys: list[object], x_axis: str, y_axis: str
) -> dict[tuple[int, int], str]:
    """(row, column) → why a cell has no value: the ``status`` of its rows (``infeasible``, ``error``)."""
    notes: dict[tuple[int, int], set[str]] = {}
    for row in rows:
        status = str(row.get("status", "") or "")
        if status not in ("", "ok") and row.get(y_axis) in ys and row.get(x_axis) in xs:
            cell = (ys.index(row.get(y_axis)), xs.index(row.get(x_axis)))
            notes.setdefault(cell, set()).add("failed" if status == "error" else status)
    return {cell: "\n".join(sorted(found)) for cell, found in notes.items()}


def tick_label(value: object) -> str:
    """An axis value as a tick label; a path to a YAML file is shown by its file name without suffix."""
    text = str(value)
    return Path(text).stem if text.endswith((".yaml", ".yml")) else text


def _annotate_cells(
    ax: Axes,
    values: np.ndarray,
    shown: np.ndarray,
    fits: np.ndarray,
    metric: str,
    image: AxesImage,
    empty_notes: Mapping[tuple[int, int], str],
) -> None:
    """Write each cell's value (and ``NOT FITS`` where it does not fit) in a readable colour; an empty
    cell gets its note (``infeasible``) or a dash."""
    for (i, j), value in np.ndenumerate(values):
        if math.isnan(value):
            note = empty_notes.get((i, j), "–")
            ax.text(j, i, note, ha="center", va="center", fontsize=8, color="#777777")
            continue
        text = _format_metric(metric, float(value)) + ("" if fits[i, j] else "\nNOT FITS")
        if math.isnan(shown[i, j]):
            color = CAPACITY_COLOR
        else:
            rgba = image.cmap(image.norm(shown[i, j]))
            color = text_color_on("#" + "".join(f"{int(c * 255):02x}" for c in rgba[:3]))
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=color)


def _axis_sort_key(value: object) -> tuple[int, float, str]:
    """Numbers in numeric order first, then everything else by its text."""
    number = _as_float(value)
    return (0, number, "") if number is not None else (1, 0.0, str(value))


def _as_float(value: object) -> float | None:
    """``value`` as a float (numbers and numeric strings), else None."""
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _as_bool(value: object) -> bool:
    """A ``fits_memory`` cell as a bool (CSV round trips turn it into ``"True"``/``"False"``)."""
    return value if isinstance(value, bool) else str(value).strip().lower() not in ("false", "0", "no")


def _format_metric(metric: str, value: float) -> str:
    """A cell value: fractions as %, times with a unit, memory in GiB, other numbers shortened."""
    kind = metric_kind(metric)
    if kind == "fraction":
        return format_percent(value)
    if kind == "time":
        return format_seconds(value)
    return f"{value:,.1f} GiB" if kind == "memory" else _short_number(value)


def _metric_label(metric: str) -> str:
    """A colour-bar label with the metric's unit."""
    unit = {
        "fraction": "% of dense peak",
        "time": "s",
        "memory": "GiB",
        "rate": metric.removesuffix("_per_s") + "/s",
    }
    kind = metric_kind(metric)
    return f"{metric} ({unit[kind]})" if kind in unit else metric


def _short_number(value: float) -> str:
    """``1234567`` → ``"1.23M"``; small numbers with three significant digits."""
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"
