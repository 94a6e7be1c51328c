"""Charts of one simulated step: time breakdown, memory per GPU, link load per tier (PNG or SVG by suffix)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.patches import Patch

from simulator.report.schema import LinkUse, StepReport
from simulator.report.style import (
    BREAKDOWN_COLORS,
    BREAKDOWN_LABELS,
    CAPACITY_COLOR,
    COMM_KINDS,
    COMM_LABELS,
    MEMORY_COLORS,
    MEMORY_COMPONENTS,
    comm_color,
    format_percent,
    format_seconds,
    hbm_capacity_gib,
    link_type_colors,
    new_figure,
    save_figure,
    text_color_on,
    tier_color,
    tier_label,
    time_unit,
)

_SPLIT_TOLERANCE = 0.02  # per-kind parts must sum to the aggregate within 2% to be drawn split
_LABEL_MIN_SHARE = 0.06  # segments narrower than this share of the bar get no text inside
HIDDEN_HATCH = "///"


@dataclass(frozen=True)
class Segment:
    """One coloured piece of a stacked bar."""

    key: str  # legend identity: "compute", "exposed_comm", "comm:tp", "bubble" ...
    label: str
    seconds: float
    color: str
    hatched: bool = False


def step_segments(report: StepReport) -> list[Segment]:
    """The step's stacked parts: compute, exposed comm (by kind when known), bubble, other."""
    b = report.breakdown
    segments = [Segment("compute", BREAKDOWN_LABELS["compute"], b.compute_s, BREAKDOWN_COLORS["compute"])]
    per_kind = {k: getattr(report.exposed_comm, f"{k}_s") for k in COMM_KINDS}
    if _sums_to(per_kind.values(), b.exposed_comm_s):
        segments += [
            Segment(f"comm:{k}", f"exposed {COMM_LABELS[k]}", v, comm_color(k))
            for k, v in per_kind.items()
            if v > 0
        ]
    else:
        segments.append(
            Segment(
                "exposed_comm",
                BREAKDOWN_LABELS["exposed_comm"],
                b.exposed_comm_s,
                BREAKDOWN_COLORS["exposed_comm"],
            )
        )
    segments.append(Segment("bubble", BREAKDOWN_LABELS["bubble"], b.bubble_s, BREAKDOWN_COLORS["bubble"]))
    segments.append(Segment("other", BREAKDOWN_LABELS["other"], b.other_s, BREAKDOWN_COLORS["other"]))
    return [s for s in segments if s.seconds > 0]


def hidden_segments(report: StepReport) -> list[Segment]:
    """Communication hidden under compute (outside the step sum), by kind when the split is known."""
    total = report.breakdown.overlapped_comm_s
    per_kind = {
        k: max(getattr(report.comm, f"{k}_s") - getattr(report.exposed_comm, f"{k}_s"), 0.0)
        for k in COMM_KINDS
    }
    if _sums_to(per_kind.values(), total):
        segs = [
            Segment(f"comm:{k}", f"hidden {COMM_LABELS[k]}", v, comm_color(k), True)
            for k, v in per_kind.items()
        ]
    else:
        segs = [
            Segment(
                "overlapped_comm",
                BREAKDOWN_LABELS["overlapped_comm"],
                total,
                BREAKDOWN_COLORS["overlapped_comm"],
                True,
            )
        ]
    return [s for s in segs if s.seconds > 0]


def _sums_to(parts: Iterable[float], total: float) -> bool:
    """Whether per-kind parts are present and add up to ``total`` (so drawing them split is honest)."""
    have = sum(parts)
    return have > 0 and abs(have - total) <= _SPLIT_TOLERANCE * max(total, 1e-12)


def draw_segments(
    ax: Axes, y: float, segments: list[Segment], scale: float, height: float, whole: float
) -> None:
    """Draw one horizontal stacked bar at ``y`` (times multiplied by ``scale``); pieces wide enough are
    labelled with their value and their share of ``whole`` (the step, in the scaled unit)."""
    left = 0.0
    for seg in segments:
        width = seg.seconds * scale
        ax.barh(
            y,
            width,
            left=left,
            height=height,
            color=seg.color,
            alpha=0.45 if seg.hatched else 1.0,
            hatch=HIDDEN_HATCH if seg.hatched else None,
            edgecolor="white" if not seg.hatched else seg.color,
            linewidth=0.8,
        )
        if whole > 0 and width >= _LABEL_MIN_SHARE * whole:
            ax.text(
                left + width / 2,
                y,
                f"{width:,.3g}\n{width / whole:.0%}",
                ha="center",
                va="center",
                fontsize=8,
                color="black" if seg.hatched else text_color_on(seg.color),
            )
        left += width


def legend_handles(segments: list[Segment]) -> list[Patch]:
    """One legend entry per distinct segment key, hatched entries drawn hatched."""
    seen: dict[str, Patch] = {}
    for seg in segments:
        key = seg.key + (":hidden" if seg.hatched else "")
        if key not in seen:
            seen[key] = Patch(
                facecolor=seg.color,
                alpha=0.45 if seg.hatched else 1.0,
                hatch=HIDDEN_HATCH if seg.hatched else None,
                edgecolor=seg.color if seg.hatched else "white",
                label=seg.label,
            )
    return list(seen.values())


def step_breakdown_chart(report: StepReport, path: str | os.PathLike[str]) -> Path:
    """One horizontal stacked bar of the step (compute, exposed comm by kind, bubble, other) and a
    hatched bar of the hidden communication; PNG or SVG by the path's suffix. Returns the path."""
    step, hidden = step_segments(report), hidden_segments(report)
    unit_name, scale = time_unit(report.step_time_s)
    span = max(report.step_time_s, sum(s.seconds for s in hidden)) * scale
    fig = new_figure(11, 3.0)
    ax = fig.add_subplot()
    whole = report.step_time_s * scale
    draw_segments(ax, 1.0, step, scale, 0.6, whole)
    draw_segments(ax, 0.0, hidden, scale, 0.45, whole)
    ax.set_yticks([1.0, 0.0], ["step\n(critical rank)", "hidden comm\n(not in step)"])
    ax.set_ylim(-0.5, 1.5)
    ax.set_xlim(0, span * 1.02 if span > 0 else 1)
    ax.set_xlabel(f"time per step ({unit_name})")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.set_title(
        f"{report.scenario}: step {format_seconds(report.step_time_s)}, MFU {format_percent(report.mfu)}",
        loc="left",
        fontsize=11,
    )
    ax.legend(
        handles=legend_handles(step + hidden),
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
        fontsize=8,
    )
    return save_figure(fig, path)


def memory_chart(report: StepReport, path: str | os.PathLike[str], capacity_gib: float | None = None) -> Path:
    """A stacked bar of memory per GPU (weights, grads, optimizer, activations, other) against the HBM
    capacity line (``capacity_gib``; looked up from ``report.gpu`` when None). Returns the path."""
    mem = report.memory_gib_per_gpu
    capacity = capacity_gib if capacity_gib is not None else hbm_capacity_gib(report.gpu)
    fig = new_figure(11, 2.6)
    ax = fig.add_subplot()
    span = max(mem.total, capacity or 0.0)
    left = 0.0
    for name in MEMORY_COMPONENTS:
        value = getattr(mem, name)
        ax.barh(0, value, left=left, height=0.6, color=MEMORY_COLORS[name], edgecolor="white", label=name)
        if value >= _LABEL_MIN_SHARE * span:
            ax.text(left + value / 2, 0, f"{value:,.1f}", ha="center", va="center", fontsize=8)
        left += value
    if capacity:
        ax.axvline(
            capacity, color=CAPACITY_COLOR, linestyle="--", linewidth=1.5, label=f"HBM {capacity:,.1f} GiB"
        )
    verdict = "fits" if report.fits_memory else "NOT FITS"
    ax.set_title(
        f"{report.scenario}: memory per GPU {mem.total:,.1f} GiB ({verdict})",
        loc="left",
        fontsize=11,
        color="black" if report.fits_memory else CAPACITY_COLOR,
    )
    ax.set_yticks([0], ["per GPU"])
    ax.set_ylim(-0.6, 0.6)
    ax.set_xlim(0, span * 1.08 if span > 0 else 1)
    ax.set_xlabel("memory (GiB)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
    return save_figure(fig, path)


def links_chart(
    report: StepReport, path: str | os.PathLike[str], max_links: int = 15, per_tier: int = 3
) -> Path:
    """Link load over the step. With tiers (current reports): the top panel is one bar per fabric tier
    (its utilisation, and a tick at its busiest link's), the bottleneck tier named in the title; the bottom
    panel the ``per_tier`` busiest links of every tier, coloured by tier. Older reports (links only): the
    ``max_links`` busiest links coloured by link type. Without link data the chart says so."""
    if report.tiers:
        return _tiers_chart(report, path, per_tier)
    links = report.links[:max_links]
    fig = new_figure(10, 1.6 + 0.32 * max(len(links), 2))
    ax = fig.add_subplot()
    shown = f" ({len(links)} of {len(report.links)})" if len(links) < len(report.links) else ""
    ax.set_title(f"{report.scenario}: busiest links over one step{shown}", loc="left", fontsize=11)
    if not links:
        note = "no link usage recorded (analytical network model?)"
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return save_figure(fig, path)
    colors = link_type_colors([link.link_type for link in links])
    _link_bars(ax, links, [colors[link.link_type] for link in links])
    ax.legend(
        handles=[Patch(color=c, label=t) for t, c in sorted(colors.items())],
        title="link type",
        loc="center left",
        bbox_to_anchor=(1.01, 0.5),
        frameon=False,
        fontsize=8,
        title_fontsize=8,
    )
    return save_figure(fig, path)


def _tiers_chart(report: StepReport, path: str | os.PathLike[str], per_tier: int) -> Path:
    tiers = report.tiers
    links = [(t.tier, link) for t in tiers for link in t.busiest[:per_tier]]
    fig = new_figure(10, 2.4 + 0.3 * len(tiers) + 0.3 * max(len(links), 1))
    top_ax, low_ax = fig.subplots(2, 1, height_ratios=[len(tiers) + 1, max(len(links), 1) + 1])
    bottleneck = f"bottleneck tier: {tier_label(report.bottleneck_tier)}" if report.bottleneck_tier else ""
    top_ax.set_title(
        f"{report.scenario}: link load per fabric tier over one step"
        + (f" ({bottleneck})" if bottleneck else ""),
        loc="left",
        fontsize=11,
    )
    ys = list(range(len(tiers)))[::-1]
    mean = [t.utilization * 100 for t in tiers]
    peak = [t.max_utilization * 100 for t in tiers]
    span = max(100.0, max(peak, default=0.0) * 1.15)
    top_ax.barh(ys, mean, color=[tier_color(t.tier) for t in tiers], height=0.6, label="tier (all its links)")
    top_ax.scatter(peak, ys, marker="|", s=260, color="black", zorder=3, label="its busiest link")
    for y, t, m, p in zip(ys, tiers, mean, peak, strict=True):
        note = f"{m:.1f}% · busiest {p:.1f}% · {t.used_links:,}/{t.links:,} links · {t.bytes / 1e9:,.0f} GB"
        weight = "bold" if t.tier == report.bottleneck_tier else "normal"
        top_ax.text(max(m, p) + span * 0.01, y, note, va="center", fontsize=8, fontweight=weight)
    top_ax.set_yticks(ys, [tier_label(t.tier) for t in tiers], fontsize=9)
    top_ax.set_xlim(0, span * 1.45)
    top_ax.set_ylim(-0.7, len(tiers) - 0.3)
    top_ax.axvline(100, color="black", linewidth=0.8, alpha=0.5)
    top_ax.grid(axis="x", alpha=0.3)
    top_ax.set_axisbelow(True)
    top_ax.legend(loc="lower right", frameon=False, fontsize=8)
    low_ax.set_title(f"busiest {per_tier} links of each tier", loc="left", fontsize=10)
    if not links:
        low_ax.text(0.5, 0.5, "no link carried bytes", ha="center", va="center", transform=low_ax.transAxes)
        low_ax.set_axis_off()
        return save_figure(fig, path)
    _link_bars(low_ax, [link for _, link in links], [tier_color(t) for t, _ in links])
    low_ax.set_xlim(0, span * 1.45)
    return save_figure(fig, path)


def _link_bars(ax: Axes, links: list[LinkUse], colors: list[str]) -> None:
    """Horizontal bars of link utilisation (first on top), each labelled with its % and bytes."""
    ys = list(range(len(links)))[::-1]
    values = [link.utilization * 100 for link in links]
    ax.barh(ys, values, color=colors, height=0.7)
    top = max(100.0, max(values) * 1.15)
    for y, value, link in zip(ys, values, links, strict=True):
        ax.text(
            value + top * 0.01,
            y,
            f"{value:.{0 if value >= 10 else 1}f}% · {link.bytes / 1e9:,.1f} GB",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(ys, [_shorten(link.link, 42) for link in links], fontsize=8)
    ax.set_xlim(0, top * 1.12)
    ax.axvline(100, color="black", linewidth=0.8, alpha=0.5)
    ax.set_xlabel("utilisation over the step (% of link bandwidth)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)


def _shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters with an ellipsis in the middle, so both ends stay visible."""
    if len(text) <= width:
        return text
    half = (width - 1) // 2
    return text[:half] + "…" + text[-(width - 1 - half) :]
