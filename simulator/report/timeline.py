"""A Gantt chart of one simulated step: a row per (simulated rank, stream), bars coloured by what runs.

Compute ops are coloured by category (forward, backward, recompute, optimizer), communication by kind
(tp, dp, pp, ep, cp) with the palette of ``style.py``; idle time stays white, so pipeline bubbles show as
gaps on the compute rows. Consecutive ops of one kind and micro-batch (gaps under a pixel) are drawn as
one bar, labelled with the micro-batch number when wide enough.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Patch

from simulator.engine.trace import Trace
from simulator.report.perfetto import trace_ranks
from simulator.report.style import (
    CATEGORY_COLORS,
    COMM_KINDS,
    COMM_LABELS,
    new_figure,
    op_color,
    rank_title,
    save_figure,
    stream_sort_key,
    time_unit,
)

# Ops of one kind and micro-batch separated by less than this share of the step (under a pixel at the
# chart's width) are drawn as one bar: per-layer ops then read as one micro-batch, not a smear.
_MERGE_GAP_SHARE = 5e-4
_LABEL_CHAR_SHARE = 0.005  # a micro-batch label needs this share of the step per character (plus one)
_EDGE_MIN_SHARE = 0.004  # bars at least this wide (share of the step) are outlined in white
_CATEGORY_LABELS = {
    "forward": "forward",
    "backward": "backward",
    "backward_input": "backward, input grad (B)",
    "backward_weight": "backward, weight grad (W)",
    "recompute": "recompute",
    "optimizer": "optimizer",
}


@dataclass(frozen=True)
class Bar:
    """One drawn bar: a run of consecutive ops of the same kind and micro-batch on one row."""

    start_s: float
    end_s: float
    key: str  # a Category value, or "comm:<kind>"
    color: str
    micro_batch: int


def pick_ranks(ranks: list[int], max_ranks: int) -> list[int]:
    """All ranks when there are at most ``max_ranks``, else that many spread evenly (first and last kept)."""
    if len(ranks) <= max_ranks:
        return list(ranks)
    picks = np.unique(np.linspace(0, len(ranks) - 1, max(max_ranks, 1)).round().astype(int))
    return [ranks[i] for i in picks]


def timeline_rows(trace: Trace, ranks: list[int]) -> list[tuple[int, str]]:
    """(rank, stream) rows in drawing order: ranks ascending, each rank's compute stream first."""
    used = {(int(r), s) for r, s in zip(trace.rank.tolist(), trace.stream, strict=True)}
    rows: list[tuple[int, str]] = []
    for rank in ranks:
        streams = sorted({s for r, s in used if r == rank}, key=stream_sort_key)
        rows.extend((rank, s) for s in streams)
    return rows


def row_bars(trace: Trace, rows_idx: np.ndarray, merge_gap_s: float) -> list[Bar]:
    """The bars of one row: its ops by start time, consecutive ops of one kind and micro-batch merged."""
    bars: list[Bar] = []
    for i in rows_idx[np.argsort(trace.start_s[rows_idx], kind="stable")].tolist():
        comm = trace.comm[i]
        key = f"comm:{comm}" if trace.category[i] == "comm" or comm else trace.category[i]
        start, end, mb = float(trace.start_s[i]), float(trace.end_s[i]), int(trace.micro_batch[i])
        last = bars[-1] if bars else None
        if (
            last is not None
            and last.key == key
            and last.micro_batch == mb
            and start - last.end_s <= merge_gap_s
        ):
            bars[-1] = Bar(last.start_s, max(last.end_s, end), key, last.color, mb)
        else:
            bars.append(Bar(start, end, key, op_color(trace.category[i], comm), mb))
    return bars


def draw_row(ax: Axes, y: float, bars: list[Bar], t0_s: float, scale: float, span: float) -> None:
    """Draw one row's bars (one ``broken_barh`` per colour) and micro-batch labels on wide bars."""
    groups: dict[tuple[str, bool], list[tuple[float, float]]] = {}
    pixel = _MERGE_GAP_SHARE * span
    for k, bar in enumerate(bars):
        left, width = (bar.start_s - t0_s) * scale, (bar.end_s - bar.start_s) * scale
        wide = width >= _EDGE_MIN_SHARE * span
        # A sub-pixel bar with idle time on both sides is widened to a pixel so that it shows; one that
        # touches a neighbour is not, so it never covers the neighbour (its pixel is shared, see below).
        before = left - (bars[k - 1].end_s - t0_s) * scale if k > 0 else pixel
        after = (bars[k + 1].start_s - t0_s) * scale - (left + width) if k + 1 < len(bars) else pixel
        if width < pixel and before >= pixel and after >= pixel:
            left, width = left + width / 2 - pixel / 2, pixel
        groups.setdefault((bar.color, wide), []).append((left, width))
    # Painting order: the colour covering most of the row first, the scarcer ones over it, and sub-pixel
    # bars last. Otherwise whichever colour happened to come first is painted over: the gpt3 Gantt showed
    # recompute on one stage only, its slivers covered by the backward bars' edges (issue #10, point 7).
    order = sorted(groups.items(), key=lambda item: (not item[0][1], -sum(w for _, w in item[1])))
    for z, ((color, wide), ranges) in enumerate(order):
        # Wide bars get a white edge so neighbours stay apart. Narrow ones get none: an edge would widen
        # each sub-pixel op to a full pixel of its colour and hide its neighbours; without one, antialiasing
        # paints each pixel column in proportion to what covers it, so interleaved recompute and backward
        # slivers read as their mix.
        ax.broken_barh(
            ranges, (y - 0.38, 0.76), facecolors=color, edgecolors="white" if wide else "none",
            linewidth=0.5 if wide else 0.0, zorder=2 + z * 1e-3,
        )  # fmt: skip
    for bar in bars:
        width = (bar.end_s - bar.start_s) * scale
        text = str(bar.micro_batch)
        fits = width >= (len(text) + 1) * _LABEL_CHAR_SHARE * span
        if bar.micro_batch >= 0 and not bar.key.startswith("comm:") and fits:
            x = (bar.start_s - t0_s) * scale + width / 2
            dark = bar.key in ("backward", "backward_input", "backward_weight")
            ax.text(x, y, text, ha="center", va="center", fontsize=6.5, color="white" if dark else "black")


def legend_handles(keys: set[str]) -> list[Patch]:
    """Legend entries for the bar kinds present, in a fixed order (compute categories, then comm kinds)."""
    handles = [
        Patch(color=CATEGORY_COLORS[c], label=_CATEGORY_LABELS[c]) for c in CATEGORY_COLORS if c in keys
    ]
    handles += [
        Patch(color=op_color("comm", k), label=f"{COMM_LABELS[k]} comm")
        for k in COMM_KINDS
        if f"comm:{k}" in keys
    ]
    known = set(CATEGORY_COLORS) | {f"comm:{k}" for k in COMM_KINDS}
    for key in sorted(keys - known):
        category, _, comm = key.partition(":")
        handles.append(Patch(color=op_color(category, comm), label=comm or category))
    handles.append(Patch(facecolor="white", edgecolor="#999999", label="idle (bubble)"))
    return handles


def timeline_chart(trace: Trace, path: str | os.PathLike[str], max_ranks: int = 16) -> Path:
    """Draw a Gantt chart of one step (rows = simulated ranks × streams, at most ``max_ranks`` ranks)
    to ``path`` as PNG or SVG; returns the path."""
    all_ranks = trace_ranks(trace)
    ranks = pick_ranks(all_ranks, max_ranks)
    rows = timeline_rows(trace, ranks)
    t0 = float(trace.start_s.min()) if len(trace) else 0.0
    span_s = float(trace.end_s.max()) - t0 if len(trace) else 0.0
    unit, scale = time_unit(span_s)
    fig = new_figure(12, 1.6 + 0.3 * max(len(rows), 1))
    ax = fig.add_subplot()
    keys: set[str] = set()
    streams = np.asarray(trace.stream, dtype=object)
    for y, (rank, stream) in enumerate(rows):
        idx = np.flatnonzero((trace.rank == rank) & (streams == stream))
        bars = row_bars(trace, idx, _MERGE_GAP_SHARE * span_s)
        keys |= {b.key for b in bars}
        draw_row(ax, y, bars, t0, scale, span_s * scale)
    _decorate(ax, trace, rows, span_s * scale, unit)
    shown = f"{len(ranks)} of {len(all_ranks)}" if len(ranks) < len(all_ranks) else f"{len(ranks)}"
    ax.set_title(f"Timeline of one step: {shown} simulated ranks; white = idle", loc="left", fontsize=11)
    ax.legend(
        handles=legend_handles(keys), loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8
    )
    return save_figure(fig, path)


def _decorate(ax: Axes, trace: Trace, rows: list[tuple[int, str]], span: float, unit: str) -> None:
    """Row labels (rank title on each rank's first row), rank separators, axes limits and labels."""
    labels = []
    for y, (rank, stream) in enumerate(rows):
        first = y == 0 or rows[y - 1][0] != rank
        title = rank_title(rank, trace.rank_labels.get(rank, ""), trace.rank_multiplicity.get(rank, 1))
        labels.append(f"{title}  ·  {stream}" if first else stream)
        if first and y > 0:
            ax.axhline(y - 0.5, color="#555555", linewidth=0.8)
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first rank on top
    ax.set_xlim(0, span * 1.01 if span > 0 else 1)
    ax.set_xlabel(f"time since step start ({unit})")
    ax.grid(axis="x", alpha=0.25)
    ax.set_axisbelow(True)
