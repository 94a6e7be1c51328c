"""The terminal summary of one simulated step (``clustersim run`` without ``--json``).

Every cell is a ``rich.text.Text`` (never markup strings), so scenario or link names with brackets print
as they are, and the output stays readable without colour (``NOT FITS`` is a word, not only a red cell).
"""

from __future__ import annotations

import sys

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

from simulator.report.schema import StepReport
from simulator.report.style import (
    COMM_KINDS,
    COMM_LABELS,
    MEMORY_COMPONENTS,
    format_count,
    format_percent,
    format_seconds,
    gpu_display_name,
    hbm_capacity_gib,
    tier_label,
    time_unit,
)

_SUM_TOLERANCE = 0.01  # breakdown parts may differ from the step time by 1% before we say so
# Columns when stdout is not a terminal (a pipe, a file, CI): rich would squeeze tables into 80 columns and
# cut names (issue #10, point 5); the widest row of the summary (a link name in the tier table) fits in 160.
PIPE_WIDTH = 200


def output_console() -> Console:
    """The console for a command's stdout: the terminal's width, or PIPE_WIDTH columns when not a terminal."""
    return Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)


def print_report(
    report: StepReport, console: Console, *, capacity_gib: float | None = None, max_links: int = 8
) -> None:
    """Print a step summary: headline, metrics, breakdown, communication, memory, warnings, links.

    ``capacity_gib`` is the HBM per GPU; by default it is looked up from ``report.gpu`` in the catalog.
    """
    capacity = capacity_gib if capacity_gib is not None else hbm_capacity_gib(report.gpu)
    parts: list[RenderableType] = [headline(report), metrics_table(report), breakdown_table(report)]
    # absent (all zero) from reports stored before it
    if any(v > 0 for v in report.kernel_classes.model_dump().values()):
        parts.append(kernel_classes_table(report))
    if any(getattr(report.comm, f"{k}_s") > 0 for k in COMM_KINDS):
        parts.append(comm_table(report))
    parts.append(memory_table(report, capacity))
    if report.warnings:
        parts.append(warnings_text(report.warnings))
    if report.tiers:
        parts.append(tiers_table(report))
    if report.links and max_links > 0:
        parts.append(links_table(report, max_links))
    parts.append(cost_text(report))
    for part in parts:
        console.print(part)
        console.print()


def headline(report: StepReport) -> Text:
    """Scenario name, model, GPUs × GPU type and the parallel layout, one line each."""
    text = Text(report.scenario or "(unnamed scenario)", style="bold")
    what = [
        f"model {report.model}" if report.model else "",
        f"{format_count(report.gpus)} × {gpu_display_name(report.gpu)}",
    ]
    if report.cluster:
        what.append(f"cluster {report.cluster}")
    text.append("\n" + " · ".join(w for w in what if w))
    if report.layout is not None:
        text.append("\n" + layout_line(report))
    return text


def layout_line(report: StepReport) -> str:
    """The layout in two short lines: parallel dimensions and schedule, then batch and numerics."""
    lay = report.layout
    if lay is None:
        return ""
    dims = [
        f"tp {lay.tp}",
        f"pp {lay.pp}",
        f"dp {lay.dp}",
        f"cp {lay.cp}",
        f"ep {lay.ep}",
        f"zero {lay.zero}",
    ]
    if lay.sequence_parallel and lay.tp > 1:  # sequence parallelism splits over the tp group: none at tp 1
        dims.append("sequence-parallel")
    dims.append(lay.schedule + (f" (v={lay.virtual_stages})" if lay.virtual_stages > 1 else ""))
    batch = [
        f"{lay.micro_batches} micro-batches of {lay.micro_batch} × {lay.seq_len} tokens",
        f"global batch {lay.global_batch}",
        lay.precision,
        f"recompute {lay.recompute}",
    ]
    return "layout " + " · ".join(dims) + "\nbatch  " + " · ".join(batch)


def metrics_table(report: StepReport) -> Table:
    """Step time and the throughput and efficiency figures, as a two-column grid."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(justify="right")
    grid.add_row("step time", format_seconds(report.step_time_s))
    grid.add_row("tokens/s", format_count(report.tokens_per_s))
    grid.add_row("samples/s", f"{report.samples_per_s:,.2f}")
    grid.add_row("model TFLOP/s per GPU", f"{report.model_tflops_per_gpu:,.1f}")
    grid.add_row("MFU", format_percent(report.mfu))
    grid.add_row("HFU", format_percent(report.hfu))
    return grid


def breakdown_table(report: StepReport) -> Table:
    """Where the step goes: compute, exposed comm, bubble, other (summing to the step), and hidden comm."""
    b, step = report.breakdown, report.step_time_s
    unit = time_unit(step)
    table = Table(title="Step time breakdown (critical rank)", title_justify="left")
    table.add_column("component")
    table.add_column("time", justify="right")
    table.add_column("% of step", justify="right")
    rows = [
        ("compute", b.compute_s),
        ("exposed comm", b.exposed_comm_s),
        ("bubble", b.bubble_s),
        ("other", b.other_s),
    ]
    for name, value in rows:
        table.add_row(name, format_seconds(value, unit), _share(value, step))
    table.add_section()
    total = sum(v for _, v in rows)
    table.add_row(Text("step", style="bold"), format_seconds(step, unit), _share(total, step))
    table.add_row(
        Text("hidden comm (not in the step)", style="dim"),
        Text(format_seconds(b.overlapped_comm_s, unit), style="dim"),
        Text(_share(b.overlapped_comm_s, step), style="dim"),
    )
    if step > 0 and abs(total - step) > _SUM_TOLERANCE * step:
        table.caption = f"parts sum to {format_seconds(total, unit)}, not the step time"
    return table


_KERNEL_CLASS_ROWS = (
    ("GEMM", "gemm_s"),
    ("attention", "attention_s"),
    ("element-wise", "elementwise_s"),
    ("FP8 cast", "fp8_cast_s"),
    ("host-bound (launch wait)", "host_bound_s"),
)


def kernel_classes_table(report: StepReport) -> Table:
    """Where the compute time goes, per kind of kernel (summing to the breakdown's compute), with the
    optimizer update and the exposed communication beside it."""
    k, step = report.kernel_classes, report.step_time_s
    unit = time_unit(step)
    table = Table(title="Time per kernel class (critical rank)", title_justify="left")
    table.add_column("class")
    table.add_column("time", justify="right")
    table.add_column("% of step", justify="right")
    for name, field in _KERNEL_CLASS_ROWS:
        value = getattr(k, field)
        table.add_row(name, format_seconds(value, unit), _share(value, step))
    table.add_section()
    compute = k.compute_s()
    table.add_row(Text("compute", style="bold"), format_seconds(compute, unit), _share(compute, step))
    table.add_row("optimizer (in other)", format_seconds(k.optimizer_s, unit), _share(k.optimizer_s, step))
    table.add_row("exposed comm", format_seconds(k.communication_s, unit), _share(k.communication_s, step))
    return table


def comm_table(report: StepReport) -> Table:
    """Communication time per kind on the critical rank: total, exposed and hidden."""
    unit = time_unit(report.step_time_s)
    table = Table(title="Communication per kind", title_justify="left")
    for name in ("kind", "total", "exposed", "hidden", "exposed % of step"):
        table.add_column(name, justify="left" if name == "kind" else "right")
    for kind in COMM_KINDS:
        total = getattr(report.comm, f"{kind}_s")
        exposed = getattr(report.exposed_comm, f"{kind}_s")
        if total <= 0 and exposed <= 0:
            continue
        hidden = max(total - exposed, 0.0)
        table.add_row(
            COMM_LABELS[kind],
            format_seconds(total, unit),
            format_seconds(exposed, unit),
            format_seconds(hidden, unit),
            _share(exposed, report.step_time_s),
        )
    return table


def memory_table(report: StepReport, capacity_gib: float | None) -> Table:
    """Memory per GPU by component, the total against HBM capacity, and whether it fits."""
    mem = report.memory_gib_per_gpu
    table = Table(title="Memory per GPU (most loaded rank)", title_justify="left")
    table.add_column("component")
    table.add_column("GiB", justify="right")
    table.add_column("% of HBM", justify="right")
    for name in MEMORY_COMPONENTS:
        value = getattr(mem, name)
        table.add_row(name, f"{value:,.2f}", _share(value, capacity_gib))
    table.add_section()
    table.add_row(Text("total", style="bold"), f"{mem.total:,.2f}", _share(mem.total, capacity_gib))
    table.add_row("HBM capacity", f"{capacity_gib:,.2f}" if capacity_gib else "unknown", "")
    verdict = Text("fits", style="bold green") if report.fits_memory else Text("NOT FITS", style="bold red")
    over = mem.total - capacity_gib if capacity_gib else 0.0
    note = f"{over:,.2f} GiB over" if not report.fits_memory and over > 0 else ""
    table.add_row(Text("verdict", style="bold"), verdict, Text(note, style="red"))
    return table


def warnings_text(warnings: list[str]) -> Text:
    """The report's warnings, one per line."""
    text = Text("Warnings", style="bold yellow")
    for warning in warnings:
        text.append("\n  ! ", style="yellow")
        text.append(warning)
    return text


def tiers_table(report: StepReport) -> Table:
    """Load per fabric tier, inner to outer: links used, bytes moved, the tier's utilisation over the step
    and its busiest link's; the bottleneck tier (busiest link most utilised) is marked."""
    table = Table(title="Link load per fabric tier (average over the step)", title_justify="left")
    table.add_column("tier")
    table.add_column("links used", justify="right")
    table.add_column("GB moved", justify="right")
    table.add_column("tier util.", justify="right")
    table.add_column("busiest", justify="right")
    table.add_column("busiest link", overflow="fold")
    table.add_column("")
    for tier in report.tiers:
        top = tier.busiest[0].link if tier.busiest else "–"
        mark = Text("bottleneck", style="bold red") if tier.tier == report.bottleneck_tier else Text("")
        table.add_row(
            tier_label(tier.tier),
            f"{format_count(tier.used_links)} / {format_count(tier.links)}",
            f"{tier.bytes / 1e9:,.1f}",
            format_percent(tier.utilization),
            format_percent(tier.max_utilization),
            top,
            mark,
        )
    return table


def links_table(report: StepReport, max_links: int) -> Table:
    """The busiest links of the bottleneck tier (of the whole cluster when the report has no tiers),
    most loaded first: bytes moved and utilisation over the step."""
    tier = next((t for t in report.tiers if t.tier == report.bottleneck_tier), None)
    pool = tier.busiest if tier is not None else report.links
    shown = pool[:max_links]
    if tier is not None:
        title = f"Busiest links, {tier_label(tier.tier)} ({len(shown)} of {tier.links})"
    else:
        title = f"Busiest links ({len(shown)} of {len(report.links)})"
    table = Table(title=title, title_justify="left")
    table.add_column("link", overflow="fold")
    table.add_column("type")
    table.add_column("GB moved", justify="right")
    table.add_column("utilisation", justify="right")
    for link in shown:
        table.add_row(link.link, link.link_type, f"{link.bytes / 1e9:,.2f}", format_percent(link.utilization))
    return table


def cost_text(report: StepReport) -> Text:
    """What the simulation itself cost: simulated ranks, events, wall-clock seconds."""
    line = (
        f"simulated {format_count(report.simulated_ranks)} ranks for {format_count(report.gpus)} GPUs, "
        f"{format_count(report.events)} events, {report.wall_s:,.2f} s wall"
    )
    if report.version:
        line += f" · clustersim {report.version}"
    return Text(line, style="dim")


def _share(value: float, whole: float | None) -> str:
    """``value`` as a percentage of ``whole``; a dash when there is no whole."""
    return format_percent(value / whole) if whole else "–"
