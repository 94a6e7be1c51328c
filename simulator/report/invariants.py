"""Invariants every simulated step must hold, checked at the end of every run, not only in tests (#12).

A violation is a bug in clustersim, never a number to print: ``check_invariants`` raises
``InternalError`` naming the scenario, which the CLI prints as a bug report and exits with status 3.

* every figure is finite, no duration is negative;
* the step is its parts: compute + exposed communication + bubble + other = step time (the overlapped
  communication is hidden under compute, not part of the step);
* the kernel classes are the compute time: gemm + attention + elementwise + fp8_cast + host_bound =
  compute, and their communication is the exposed communication (checked on traces that carry classes);
* MFU <= HFU <= 1 (hardware FLOPs include the model's and what recomputation adds; no GPU beats its peak);
* tokens/s = global batch x sequence length / step time, samples/s = global batch / step time;
* no op ends before it starts;
* bytes sent point to point = bytes received (over every rank each representative stands for);
* every link's utilisation is at most 1 under the flow model: a link above 100 % means it broke its own capacity
  constraint. The analytical model shares no link between kinds of traffic (a DP ring and a pipeline send on
  one NIC each run at full rate), so there a link above 100 % is a warning that says so, not a bug.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from simulator.engine.trace import Trace
from simulator.errors import InternalError
from simulator.report.schema import StepReport

# Relative tolerance of the sums and ratios: the parts are summed in float64 over up to 10^7 intervals, whose
# rounding stays below 10^-9 of the step; 10^-6 is far above rounding and far below any real discrepancy.
REL_TOL = 1e-6
# Absolute slack on utilisations and MFU/HFU (fractions of 1): float rounding of bytes / (capacity x time).
FRACTION_TOL = 1e-6


def _figures(node: Any, path: str) -> Iterator[tuple[str, float]]:
    """Every number of a report document, with its dotted path."""
    if isinstance(node, bool):
        return
    if isinstance(node, int | float):
        yield path, float(node)
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _figures(v, f"{path}.{k}" if path else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _figures(v, f"{path}[{i}]")


def violations(
    report: StepReport,
    trace: Trace | None = None,
    *,
    contention: bool = True,
    p2p_bytes: tuple[float, float] = (0.0, 0.0),
) -> tuple[list[str], list[str]]:
    """(errors, warnings): the invariants ``report`` (and its ``trace``) break; ``contention``: the network model
    shares links between concurrent collectives (flow), so no link may exceed its capacity; ``p2p_bytes``: bytes
    sent and bytes received point to point over all ranks, which must be equal."""
    errors: list[str] = []
    for path, value in _figures(report.model_dump(), ""):
        if not math.isfinite(value):
            errors.append(f"{path} is {value}")
        elif value < 0 and path != "wall_s":
            errors.append(f"{path} is negative ({value:g})")
    if errors:
        return errors, []  # the relations below are meaningless on non-finite figures
    step = report.step_time_s
    b = report.breakdown
    parts = b.compute_s + b.exposed_comm_s + b.bubble_s + b.other_s
    if not math.isclose(parts, step, rel_tol=REL_TOL, abs_tol=1e-12):
        errors.append(
            f"breakdown sums to {parts:.9g} s (compute {b.compute_s:.6g} + exposed {b.exposed_comm_s:.6g} + "
            f"bubble {b.bubble_s:.6g} + other {b.other_s:.6g}), not the step's {step:.9g} s"
        )
    if step <= 0:
        errors.append(f"step_time_s is {step:g}")
    if report.mfu > report.hfu + FRACTION_TOL:
        errors.append(f"MFU {report.mfu:.6g} exceeds HFU {report.hfu:.6g}")
    if report.hfu > 1 + FRACTION_TOL:
        errors.append(f"HFU {report.hfu:.6g} exceeds 1 (faster than the GPU's peak)")
    layout = report.layout
    if layout is not None and step > 0:
        tokens = layout.global_batch * layout.seq_len / step
        if not math.isclose(report.tokens_per_s, tokens, rel_tol=REL_TOL):
            errors.append(
                f"tokens_per_s {report.tokens_per_s:.9g} is not batch x seq_len / step = {tokens:.9g}"
            )
        samples = layout.global_batch / step
        if not math.isclose(report.samples_per_s, samples, rel_tol=REL_TOL):
            errors.append(f"samples_per_s {report.samples_per_s:.9g} is not batch / step = {samples:.9g}")
    k = report.kernel_classes
    if trace is not None and trace.class_s.any():
        tol = REL_TOL * max(step, 0.0)
        if not math.isclose(k.compute_s(), b.compute_s, rel_tol=REL_TOL, abs_tol=tol):
            errors.append(
                f"kernel classes sum to {k.compute_s():.9g} s, not the compute time {b.compute_s:.9g} s"
            )
        if not math.isclose(k.communication_s, b.exposed_comm_s, rel_tol=REL_TOL, abs_tol=tol):
            errors.append(f"kernel classes' communication {k.communication_s:.9g} s is not the exposed "
                          f"communication {b.exposed_comm_s:.9g} s")  # fmt: skip
    if trace is not None and len(trace):
        negative = int(np.count_nonzero(trace.end_s < trace.start_s))
        if negative:
            errors.append(f"{negative} ops end before they start")
    sent, received = p2p_bytes
    if not math.isclose(sent, received, rel_tol=REL_TOL):
        errors.append(f"{sent:.6g} bytes sent point to point but {received:.6g} received")
    warnings: list[str] = []
    links = [(link.link, link.utilization) for link in report.links]
    links += [(f"{t.tier} (busiest)", t.max_utilization) for t in report.tiers]
    over = [(name, u) for name, u in links if u > 1 + FRACTION_TOL]
    if over:
        name, worst = max(over, key=lambda x: x[1])
        if contention:
            errors.append(
                f"link utilisation above 100% ({worst:.1%} on {name}): the flow model exceeded a link's capacity"
            )
        else:
            warnings.append(
                f"link utilisation above 100% ({worst:.1%} on {name}): the analytical network model lets different "
                "kinds of traffic use a link at full rate each; network.model: flow shares it"
            )
    return errors, warnings


def check_invariants(
    report: StepReport,
    trace: Trace | None = None,
    *,
    scenario: str = "",
    contention: bool = True,
    p2p_bytes: tuple[float, float] = (0.0, 0.0),
) -> StepReport:
    """``report``, with any warning-only violation added to its warnings; an ``InternalError`` (a bug
    report naming ``scenario``) when it breaks an invariant."""
    errors, warnings = violations(report, trace, contention=contention, p2p_bytes=p2p_bytes)
    if errors:
        shown = "; ".join(errors[:3]) + (f" (and {len(errors) - 3} more)" if len(errors) > 3 else "")
        raise InternalError(f"the simulated step breaks clustersim's invariants: {shown}", scenario=scenario)
    if warnings:
        return report.model_copy(update={"warnings": [*report.warnings, *warnings]})
    return report
