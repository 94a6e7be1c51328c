"""Fit ``simulator/hardware/calibration/links.yaml`` on measured nccl-tests bus bandwidths.

``python -m simulator.calibrate links`` rewrites the file; ``--check`` only compares (exit 1 if stale).

What is fitted (``simulator/validation/data/nccl-busbw.yaml``, each point simulated on the shipped topology
of its system at its message size, see ``simulator/validation/nccl.py``): for each (link type, protocol
key) in ``TARGETS``, the achieved fraction of line rate at which the simulated large-message busbw equals
the measured one (the mean where a system has several points), found by bisection on the full model. The
efficiency is a property of the hardware type (NVLink3, NVLink4, HDR, NDR ...), never of a scenario.

The double binary tree has no measurement of its own. The measured multi-node all-reduce is what NCCL's
own choice reached; since ``auto`` takes the fastest candidate, the tree may not beat it. The tree's
fraction is therefore the ring's times one protocol factor (as NCCL's tuner scales Tree bandwidth by a
constant, ``busBw * .92`` in tuning.cc), the largest factor <= 1 at which the simulated tree all-reduce on
two DGX A100 does not exceed the measurement.

Not fitted: per-step latencies are NCCL's tuner constants (NCCL 2.20.3 ``src/graph/tuning.cc``,
``hwLat[NVLINK|PCI|NET][Ring][LL]``, docs/research-notes.md (a)); link types without a measurement take
a documented default (``INHERIT``, ``PCIE_EFFICIENCY``, ``DEFAULT_EFFICIENCY``). Deterministic: same data,
same file, byte for byte.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

import yaml

from simulator.hardware.calibration import LinkCalibration
from simulator.topology.builders.base import NVLS_LINK_TYPES
from simulator.validation.nccl import PreparedPoint, measured_points, nccl_rows, predict, prepare
from simulator.workload.ops import CollectiveKind

AR, AG, SR = CollectiveKind.ALL_REDUCE, CollectiveKind.ALL_GATHER, CollectiveKind.SEND_RECV
KEYS = ("ring", "tree", "nvls", "p2p")
DIGITS = 4  # written precision of a fraction of line rate
COMMAND = "python -m simulator.calibrate links"


@dataclass(frozen=True)
class Target:
    """One fitted (link type, key): the measured points that pin it and the algorithm they ran."""

    link_type: str
    key: str
    system: str
    nodes: int
    op: CollectiveKind
    algorithm: str


# In fitting order: intra-node first, then the networks whose paths also cross NVLink and PCIe.
TARGETS = (
    Target("nvlink3", "ring", "dgx-a100", 1, AR, "ring"),  # NCCL rings on one DGX A100 (no NVLS on A100)
    Target("nvlink4", "ring", "dgx-h100", 1, AG, "ring"),
    Target("nvlink4", "nvls", "dgx-h100", 1, AR, "nvls"),
    Target("ib-hdr", "ring", "dgx-a100", 2, AR, "ring"),  # 8 rings, one per HDR NIC: NIC-bound
    Target("ib-ndr", "p2p", "ndr-400g-nic", 2, SR, "p2p"),
)
TREE_POINT = ("dgx-a100", 2, AR)  # the only measured multi-node all-reduce with a tree candidate

# Unmeasured link types: the nearest measured generation of the same class (same NCCL transport).
INHERIT = {
    "nvlink2": "nvlink3",
    "nvlink5": "nvlink4",
    "ib-edr": "ib-hdr",
    "opa-100": "ib-hdr",  # 100 Gb/s class, like EDR
    "ib-xdr": "ib-ndr",
    "roce-400g": "ib-ndr",  # 400 Gb/s NIC on NCCL's net transport
}
# Within a fitted type, a key without its own measurement: NCCL runs ring and p2p chunks over the same
# transport (NVLink P2P, or the net plugin), so one stands for the other.
SAME_TRANSPORT = {"ring": "p2p", "p2p": "ring"}
# PCIe: 25 GB/s measured peak on A100 PCIe Gen4 x16 (31.5 GB/s line rate), BaM authors, ZaidQureshi/bam
# issue #54 ("it is measured peak"); NCCL's own topology model is close: 24 GB/s for Gen4 x16
# (kvDictPciGen "16 GT/s" = 120 x 100 Mb/s per lane, sjeaugey in NVIDIA/nccl issue #1206).
PCIE_EFFICIENCY = round(25.0 / 31.5, DIGITS)
# Any other link type: "line rate minus ~20% protocol overhead" (NVIDIA maintainer, nccl-tests issue 212).
DEFAULT_EFFICIENCY = 0.8
# NCCL 2.20.3 tuning.cc hwLat[hw][Ring][LL], µs per algorithm step (docs/research-notes.md (a)): the
# per-step cost of the latency-bound regime, where NCCL runs the LL protocol.
NCCL_STEP_LATENCY_US = {
    "nvlink": 0.6,
    "pcie": 1.0,
    "qpi": 1.0,
    "upi": 1.0,
    "ib": 2.7,
    "roce": 2.7,
    "opa": 2.7,
}
DEFAULT_STEP_LATENCY_US = 2.7  # an unknown link type is taken as a network link (NET class)
# NCCL 2.20.3 tuning.cc fixed cost of one collective per algorithm, µs (docs/research-notes.md (a)): baseLat
# [Ring|Tree][LL] = 6.6 | 6.8 (small messages run LL); NVLS replaces the base by its hwLat[NVLINK][NVLS] = 23.
# Algorithms NCCL does not have get the ring's figure; point-to-point none (its steps carry it).
NCCL_BASE_LATENCY_US = {"ring": 6.6, "tree": 6.8, "nvls": 23.0, "direct": 6.6, "halving_doubling": 6.6,
                        "hierarchical": 6.6, "p2p": 0.0}  # fmt: skip


@dataclass(frozen=True)
class FitState:
    """Fitted values so far and how each was obtained (for the file header); each step makes a new one."""

    link_types: tuple[str, ...]
    fitted: dict[tuple[str, str], float] = field(default_factory=dict)
    tree_factor: float = 1.0
    notes: dict[tuple[str, str], str] = field(default_factory=dict)
    tree_note: str = ""


def catalog_link_types() -> list[str]:
    """Every link type of ``simulator/hardware/links.yaml``, sorted."""
    doc = yaml.safe_load(resources.files("simulator.hardware").joinpath("links.yaml").read_text())
    return sorted(doc["links"])


def _prefix(link_type: str, table: dict[str, float] | dict[str, str]) -> str | None:
    return max((p for p in table if link_type.startswith(p)), key=len, default=None)


def step_latency_us(link_type: str) -> float | None:
    """NCCL's per-step latency of ``link_type``'s hardware class, or None (not an NCCL class)."""
    p = _prefix(link_type, NCCL_STEP_LATENCY_US)
    return NCCL_STEP_LATENCY_US[p] if p else None


def _own(state: FitState, link_type: str, key: str) -> float | None:
    """A fitted value of the type itself, for ``key`` or its same-transport stand-in."""
    for k in (key, SAME_TRANSPORT.get(key, key)):
        if (link_type, k) in state.fitted:
            return state.fitted[(link_type, k)]
    return None


def efficiency_of(state: FitState, link_type: str, key: str) -> float:
    """The fraction of line rate of ``link_type`` under ``key`` given the fit so far."""
    base_key = "ring" if key == "tree" else key
    value = _own(state, link_type, base_key)
    if value is None and link_type in INHERIT:
        value = _own(state, INHERIT[link_type], base_key)
    if value is None:
        value = PCIE_EFFICIENCY if link_type.startswith("pcie") else DEFAULT_EFFICIENCY
    return round(value * state.tree_factor, DIGITS) if key == "tree" else value


def keys_of(link_type: str) -> tuple[str, ...]:
    """Protocol keys written for a link type (``nvls`` only where the NVSwitch can reduce)."""
    nvls = link_type in NVLS_LINK_TYPES
    return tuple(k for k in KEYS if k != "nvls" or nvls)


def calibration(state: FitState, fitted_on: tuple[str, ...] = ()) -> LinkCalibration:
    """A ``LinkCalibration`` of every catalog link type from the fit so far."""
    eff = {t: {k: efficiency_of(state, t, k) for k in keys_of(t)} for t in state.link_types}
    lat = {t: us * 1e-6 for t in state.link_types if (us := step_latency_us(t)) is not None}
    return LinkCalibration(
        efficiency=eff,
        step_latency_s=lat,
        base_latency_s={a: us * 1e-6 for a, us in NCCL_BASE_LATENCY_US.items()},
        default_efficiency=DEFAULT_EFFICIENCY,
        default_step_latency_s=DEFAULT_STEP_LATENCY_US * 1e-6,
        fitted_on=fitted_on,
    )


# ---------------------------------------------------------------------------------------------- fitting
def solve_increasing(f: Callable[[float], float], target: float, lo: float = 0.05, hi: float = 1.0) -> float:
    """x in [lo, hi] with f(x) = target for a nondecreasing f, by bisection (hi if out of reach)."""
    if f(hi) <= target:
        return hi
    if f(lo) >= target:
        return lo
    for _ in range(48):  # interval below 1e-14: far under the written precision
        mid = 0.5 * (lo + hi)
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _select(
    prepared: list[PreparedPoint], system: str, nodes: int, op: CollectiveKind, algorithm: str
) -> list[PreparedPoint]:
    pts = [
        p
        for p in prepared
        if (p.point.system, p.point.nodes, p.point.op) == (system, nodes, op)
        and p.point.algorithm in (None, algorithm)
    ]
    if not pts:
        raise ValueError(f"no measured point for {system} × {nodes} node(s) {op.value}")
    return pts


def _busbw(prep: PreparedPoint, state: FitState, algorithm: str) -> float:
    return predict(prep, calibration(state), network="analytical", algorithm=algorithm)[0]


def _note(target: float, reached: float) -> str:
    """`` — NOT reached`` when the bisection hit a bound (another link limits, or efficiency 1 is short)."""
    return "" if abs(reached / target - 1) < 0.005 else f" -- NOT reached: simulated {reached:.1f} GB/s"


def fit_target(state: FitState, t: Target, prepared: list[PreparedPoint]) -> FitState:
    """``state`` with ``t.link_type``'s ``t.key`` fraction fitted so the simulated busbw meets the
    measured mean."""
    pts = _select(prepared, t.system, t.nodes, t.op, t.algorithm)
    target = sum(p.point.busbw_GBps for p in pts) / len(pts)

    def with_value(x: float) -> FitState:
        return replace(state, fitted=state.fitted | {(t.link_type, t.key): x})

    value = round(solve_increasing(lambda x: _busbw(pts[0], with_value(x), t.algorithm), target), DIGITS)
    out = with_value(value)
    how = f"mean of {len(pts)} points" if len(pts) > 1 else pts[0].point.source
    note = f"{t.system} {pts[0].point.gpus} GPUs {t.op.value} ({t.algorithm}): {target:g} GB/s ({how})"
    note += _note(target, _busbw(pts[0], out, t.algorithm))
    return replace(out, notes=out.notes | {(t.link_type, t.key): note})


def fit_tree_factor(state: FitState, prepared: list[PreparedPoint]) -> FitState:
    """``state`` with the largest tree/ring factor <= 1 at which the tree all-reduce does not beat the
    measurement."""
    system, nodes, op = TREE_POINT
    pts = _select(prepared, system, nodes, op, "tree")
    target = sum(p.point.busbw_GBps for p in pts) / len(pts)
    x = solve_increasing(lambda f: _busbw(pts[0], replace(state, tree_factor=f), "tree"), target)
    # rounded down, so that at the measured size the tree stays just below the ring and auto keeps ring
    factor = math.floor(x * 10**DIGITS) / 10**DIGITS
    note = f"{system} {pts[0].point.gpus} GPUs {op.value}: tree <= {target:g} GB/s measured"
    return replace(state, tree_factor=factor, tree_note=note)


def fit(prepared: list[PreparedPoint] | None = None, passes: int = 3) -> FitState:
    """Fit every target, then the tree factor; repeat until nothing changes (a few passes at most)."""
    prepared = prepared if prepared is not None else prepare(measured_points())
    state = FitState(tuple(catalog_link_types()))
    for _ in range(passes):
        before = state
        for t in TARGETS:
            state = fit_target(state, t, prepared)
        state = fit_tree_factor(state, prepared)
        if (before.fitted, before.tree_factor) == (state.fitted, state.tree_factor):
            break
    return state


# ---------------------------------------------------------------------------------------------- output
def _fitted_on() -> tuple[str, ...]:
    seen: list[str] = []
    for p in measured_points():
        label = f"{p.system} {p.gpus} GPUs {p.op.value}: {p.source}"
        if any((t.system, t.nodes, t.op) == (p.system, p.nodes, p.op) for t in TARGETS) and label not in seen:
            seen.append(label)
    return tuple(seen)


def _header(state: FitState) -> list[str]:
    lines = [
        "# Link calibration: achieved fraction of line rate per link type and protocol key, and per-step",
        "# latency of collective algorithms. GENERATED: do not edit; rerun",
        f"#   {COMMAND}",
        "# Source data: simulator/validation/data/nccl-busbw.yaml (nccl-tests large-message bus bandwidths),",
        "# each point simulated on the shipped topology of its system (simulator/validation/nccl.py).",
        "# Fitted (bisection on the simulated busbw):",
    ]
    for (t, k), v in state.fitted.items():
        lines.append(f"#   {t}.{k} = {v:g}  <- {state.notes[(t, k)]}")
    lines += [
        f"#   tree = ring x {state.tree_factor:g}  <- {state.tree_note} (auto must not beat what NCCL's",
        "#     choice measured; NCCL's tuner likewise scales Tree bandwidth by a constant, tuning.cc)",
        "# Defaults (no measurement): a key without its own fit takes its transport twin (ring <-> p2p);",
        f"#   {', '.join(f'{a} <- {b}' for a, b in INHERIT.items())} (nearest measured generation);",
        f"#   PCIe {PCIE_EFFICIENCY:g} (25 of 31.5 GB/s measured on Gen4 x16, ZaidQureshi/bam issue #54);",
        f"#   others {DEFAULT_EFFICIENCY:g} (line rate minus ~20% protocol overhead, nccl-tests issue 212).",
        "# step_latency_us: NCCL 2.20.3 src/graph/tuning.cc hwLat[NVLINK|PCI|NET][Ring][LL] = 0.6 | 1.0 | 2.7 us",
        "#   per step (docs/research-notes.md (a)); not fitted. Unknown link types: the NET figure.",
        "# base_latency_us: NCCL 2.20.3 tuning.cc baseLat[Ring|Tree][LL] = 6.6 | 6.8 us per collective, NVLS",
        "#   hwLat[NVLINK][NVLS] = 23 us; not fitted.",
    ]
    return lines


def _comparison(calib: LinkCalibration) -> list[str]:
    lines = ["# Check (flow model, after the fit): system, GPUs, op, algorithm: measured -> simulated busbw"]
    fitted = {(t.system, t.nodes, t.op.value) for t in TARGETS}
    for r in nccl_rows(calib):
        held_out = "" if (r["system"], r["nodes"], r["op"]) in fitted else "  [held out: not fitted]"
        lines.append(
            f"#   {r['system']} {r['gpus']} {r['op']} {r['algorithm']}: {r['measured_busbw_GBps']:g} -> "
            f"{r['predicted_busbw_GBps']:.1f} GB/s ({100 * float(r['error']):+.1f}%){held_out}"  # type: ignore[arg-type]
        )
    return lines


def render(state: FitState) -> str:
    """The YAML text of the fitted calibration, with its provenance header."""
    calib = calibration(state, _fitted_on())
    lines = _header(state) + _comparison(calib) + ["efficiency:"]
    for t, per in calib.efficiency.items():
        body = ", ".join(f"{k}: {v:g}" for k, v in per.items())
        lines.append(f"  {t}: {{{body}}}")
    lines.append("step_latency_us:")
    lines += [f"  {t}: {s * 1e6:g}" for t, s in calib.step_latency_s.items()]
    lines.append("base_latency_us:")
    lines += [f"  {a}: {v * 1e6:g}" for a, v in calib.base_latency_s.items()]
    lines.append(f"default_efficiency: {DEFAULT_EFFICIENCY:g}")
    lines.append(f"default_step_latency_us: {DEFAULT_STEP_LATENCY_US:g}")
    lines.append("fitted_on:")
    lines += [f"  - {yaml.safe_dump(s, width=10**6).strip()}" for s in calib.fitted_on]
    return "\n".join(lines) + "\n"


def output_path() -> Path:
    """``simulator/hardware/calibration/links.yaml`` of this checkout."""
    return Path(str(resources.files("simulator.hardware").joinpath("calibration", "links.yaml")))


def main(argv: list[str] | None = None) -> int:
    """Fit and write (or ``--check``) the link calibration; 1 when ``--check`` finds the file stale."""
    parser = argparse.ArgumentParser(prog=f"{COMMAND}", description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the file is stale")
    parser.add_argument("--out", type=Path, default=None, help="write here instead of the package file")
    args, _ = parser.parse_known_args(argv)  # options of other parts pass through the dispatcher
    text = render(fit())
    path = args.out or output_path()
    if args.check:
        stale = not path.is_file() or path.read_text() != text
        print(f"{path}: {'stale, rerun ' + COMMAND if stale else 'up to date'}")
        return 1 if stale else 0
    path.write_text(text)
    print(f"wrote {path}")
    sys.stdout.write("".join(line[2:] + "\n" for line in text.splitlines() if line.startswith("#   ")))
    return 0
