"""Shared look and I/O of every report output: the one colour palette, unit formatting, atomic writes.

Every chart takes its colours from here, so a component (compute, tp communication, bubble, weights ...)
has the same colour in the step breakdown, the timeline, the comparison charts and the HTML report.
Charts are drawn on ``matplotlib.figure.Figure`` objects directly (Agg/SVG canvases, never pyplot), so
no global figure state is created and nothing tries to open a display.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from simulator.units import GiB

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from simulator.hardware.gpu import GpuSpec

# ---- the palette (defined once; every chart reads it) ----------------------------------------------

BREAKDOWN_COLORS: dict[str, str] = {
    "compute": "#3B6FB6",  # blue
    "exposed_comm": "#D1495B",  # red: communication nobody hid (used when no per-kind split is known)
    "overlapped_comm": "#D1495B",  # same hue, drawn hatched and pale
    "bubble": "#DADADA",  # light grey: the rank waits (pipeline bubble)
    "other": "#8C8C8C",  # mid grey
}
BREAKDOWN_LABELS: dict[str, str] = {
    "compute": "compute",
    "exposed_comm": "exposed comm",
    "overlapped_comm": "hidden comm (overlapped)",
    "bubble": "bubble (idle)",
    "other": "other",
}

COMM_KINDS: tuple[str, ...] = ("tp", "dp", "pp", "ep", "cp")  # CommKind order, as in the JSON report
COMM_COLORS: dict[str, str] = {
    "tp": "#E07A5F",  # terracotta
    "dp": "#B22234",  # dark red
    "pp": "#8E5EA2",  # purple
    "ep": "#A0522D",  # brown
    "cp": "#E377C2",  # pink
}
COMM_LABELS: dict[str, str] = {
    "tp": "TP (tensor)",
    "dp": "DP (data)",
    "pp": "PP (pipeline)",
    "ep": "EP (expert)",
    "cp": "CP (context)",
}
UNKNOWN_COMM_COLOR = "#D1495B"

CATEGORY_COLORS: dict[str, str] = {
    "forward": "#86B6E8",  # light blue
    "backward": "#2F5D9E",  # dark blue
    "backward_input": "#2F5D9E",  # zero-bubble B: the backward colour
    "backward_weight": "#2A9D8F",  # zero-bubble W: teal
    "recompute": "#F2C14E",  # gold
    "optimizer": "#6A994E",  # green
}
UNKNOWN_CATEGORY_COLOR = "#B0B0B0"

MEMORY_COMPONENTS: tuple[str, ...] = ("weights", "grads", "optimizer", "activations", "other")
MEMORY_COLORS: dict[str, str] = {
    "weights": "#59A14F",
    "grads": "#EDC948",
    "optimizer": "#B07AA1",
    "activations": "#F28E2B",
    "other": "#BAB0AC",
}
CAPACITY_COLOR = "#C00000"  # the HBM line, and NOT FITS marks

LINK_TYPE_COLORS: dict[str, str] = {"nvlink": "#76B900", "pcie": "#4E79A7", "ib": "#F28E2B"}
# Fabric tiers (``Cluster.link_tier``), inner to outer: names for tables and charts, and one colour each
# (NVLink keeps the NVLink link-type green; the switched tiers darken outwards).
TIER_LABELS: dict[str, str] = {
    "nvlink": "NVLink (scale-up)",
    "ici": "ICI (torus links)",
    "pcie": "host PCIe",
    "nic-leaf": "NIC - leaf",
    "leaf-spine": "leaf - spine",
    "spine-core": "spine - core",
}
TIER_COLORS: dict[str, str] = {
    "nvlink": "#76B900",
    "ici": "#76B900",
    "pcie": "#4E79A7",
    "nic-leaf": "#F28E2B",
    "leaf-spine": "#D1495B",
    "spine-core": "#7B2D43",
}
_FALLBACK_CYCLE: tuple[str, ...] = ("#4E79A7", "#F28E2B", "#59A14F", "#E15759", "#76B7B2", "#EDC948")
SERIES_CYCLE: tuple[str, ...] = ("#1F77B4", "#D62728", "#2CA02C", "#9467BD", "#FF7F0E", "#17BECF", "#8C564B")

# Stream order of the timeline and the Perfetto tracks: compute first, then communication streams.
STREAM_ORDER: tuple[str, ...] = (
    "compute",
    "tp-comm",
    "cp-comm",
    "ep-comm",
    "pp-send",
    "pp-recv",
    "pp-send-fwd",
    "pp-recv-fwd",
    "pp-send-bwd",
    "pp-recv-bwd",
    "dp-comm",
)

FIGURE_FORMATS: dict[str, str] = {".png": "png", ".svg": "svg"}
FIGURE_DPI = 150


def comm_color(kind: str) -> str:
    """Colour of one kind of communication (tp/dp/pp/ep/cp); unknown kinds share a neutral red."""
    return COMM_COLORS.get(kind, UNKNOWN_COMM_COLOR)


def op_color(category: str, comm: str) -> str:
    """Colour of one traced op: compute ops by category, communication ops by kind."""
    if category == "comm" or comm:
        return comm_color(comm)
    return CATEGORY_COLORS.get(category, UNKNOWN_CATEGORY_COLOR)


def link_type_colors(link_types: list[str]) -> dict[str, str]:
    """Colour per link type: a type of a known family (``nvlink3``, ``ib-hdr``, ``pcie``) gets the family's
    colour, others one from a cycle in sorted order (deterministic)."""

    def family(link_type: str) -> str | None:
        return next((f for f in LINK_TYPE_COLORS if link_type.lower().startswith(f)), None)

    unknown = sorted({t for t in link_types if family(t) is None})
    colors = {t: _FALLBACK_CYCLE[i % len(_FALLBACK_CYCLE)] for i, t in enumerate(unknown)}
    for t in link_types:
        known = family(t)
        if known is not None:
            colors[t] = LINK_TYPE_COLORS[known]
    return colors


def tier_label(tier: str) -> str:
    """Display name of a fabric tier (the tier's own name when it has none)."""
    return TIER_LABELS.get(tier, tier)


def tier_color(tier: str) -> str:
    """Colour of a fabric tier; an unknown tier gets a neutral grey."""
    return TIER_COLORS.get(tier, "#8C8C8C")


def text_color_on(color: str) -> str:
    """``"white"`` or ``"black"``, whichever reads better on a ``#rrggbb`` background."""
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return "white" if 0.299 * r + 0.587 * g + 0.114 * b < 150 else "black"


def stream_sort_key(stream: str) -> tuple[int, int, str]:
    """Order streams as STREAM_ORDER; an unknown stream goes after the known ones of its family (the text
    before the first ``-``, e.g. ``pp-send-chunk1`` after the pp streams), else last; ties by name."""
    if stream in STREAM_ORDER:
        return (STREAM_ORDER.index(stream), 0, stream)
    family = stream.split("-", 1)[0]
    places = [i for i, known in enumerate(STREAM_ORDER) if known.split("-", 1)[0] == family]
    return (places[-1], 1, stream) if places else (len(STREAM_ORDER), 1, stream)


# ---- units ----------------------------------------------------------------------------------------


def time_unit(span_s: float) -> tuple[str, float]:
    """The unit that reads best for a time span: ``("s", 1)``, ``("ms", 1e3)`` or ``("µs", 1e6)``."""
    if span_s >= 2.0:
        return "s", 1.0
    if span_s >= 2e-3:
        return "ms", 1e3
    return "µs", 1e6


def format_seconds(value_s: float, unit: tuple[str, float] | None = None) -> str:
    """A duration with its unit, e.g. ``"12.345 s"``, ``"3.21 ms"``; ``unit`` fixes the unit."""
    name, scale = unit if unit is not None else time_unit(abs(value_s))
    digits = 3 if name == "s" else 2
    return f"{value_s * scale:,.{digits}f} {name}"


def format_percent(fraction: float, digits: int = 1) -> str:
    """A fraction as a percentage, e.g. ``0.4523`` → ``"45.2%"``."""
    return f"{fraction * 100:.{digits}f}%"


def format_count(value: float) -> str:
    """A large count with thousands separators and no decimals, e.g. ``"1,234,567"``."""
    return f"{value:,.0f}"


def _gpu_spec(gpu: str) -> GpuSpec | None:
    """The catalog entry of a GPU named by catalog key or display name; None when unknown."""
    from simulator.hardware.gpu import gpu_catalog  # local: chart imports stay free of YAML loading

    for key, spec in gpu_catalog().items():
        if gpu and gpu.lower() in (key.lower(), spec.display_name.lower()):
            return spec
    return None


def hbm_capacity_gib(gpu: str) -> float | None:
    """HBM capacity in GiB of a GPU named by catalog key or display name; None when unknown."""
    spec = _gpu_spec(gpu)
    return spec.hbm_bytes / GiB if spec is not None else None


def gpu_display_name(gpu: str) -> str:
    """The datasheet name of a GPU (``"NVIDIA A100 SXM4 80GB"``), or the name as given, or ``"GPU"``."""
    spec = _gpu_spec(gpu)
    return spec.display_name if spec is not None else (gpu or "GPU")


def rank_title(rank: int, label: str, multiplicity: int) -> str:
    """A simulated rank's display name, e.g. ``"rank 8 · pp1 (×128)"``."""
    text = label.strip() or f"rank {rank}"
    if not text.startswith("rank"):
        text = f"rank {rank} · {text}"
    if multiplicity > 1 and f"×{multiplicity}" not in text and f"x{multiplicity}" not in text:
        text = f"{text} (×{multiplicity})"
    return text


# ---- files ----------------------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block completes.

    A writer that raises (or a crash) leaves ``path`` as it was and no partial file behind.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))  # honours the umask
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def figure_format(path: str | os.PathLike[str]) -> str:
    """``"png"`` or ``"svg"`` from a path's suffix; any other suffix is a ValueError."""
    suffix = Path(path).suffix.lower()
    if suffix not in FIGURE_FORMATS:
        raise ValueError(f"chart path {str(path)!r} must end in .png or .svg, not {suffix or 'nothing'!r}")
    return FIGURE_FORMATS[suffix]


def new_figure(width_in: float, height_in: float) -> Figure:
    """A blank figure with the house style (white background, constrained layout)."""
    # matplotlib is imported only where a chart is drawn: a run that draws nothing skips its ~1 s import
    # (issue #10, point 8).
    from matplotlib.figure import Figure

    return Figure(figsize=(width_in, height_in), layout="constrained", facecolor="white")


def save_figure(fig: Figure, path: str | os.PathLike[str]) -> Path:
    """Save ``fig`` to ``path`` atomically as PNG or SVG (by suffix), without timestamps; returns it."""
    import matplotlib  # see new_figure: only where a chart is drawn

    fmt = figure_format(path)
    metadata: dict[str, str | None] = {"Date": None} if fmt == "svg" else {"Software": None}
    # A fixed salt makes SVG element ids, hence the file, reproducible (the default salt is random).
    # svg.fonttype "none" keeps text as <text> elements (searchable, editable, selectable), not outlines
    # (issue #10, point 7).
    with (
        atomic_path(path) as tmp,
        matplotlib.rc_context({"svg.hashsalt": "clustersim", "svg.fonttype": "none"}),
    ):
        fig.savefig(tmp, format=fmt, dpi=FIGURE_DPI, metadata=metadata)
    return Path(path)
