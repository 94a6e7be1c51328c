"""Trace → metrics: step time, throughput, MFU/HFU and the critical rank's time breakdown.

The critical rank is the simulated rank that finishes last. Its step is cut into elementary segments
between op boundaries; each segment is compute (forward, backward, recompute on the compute stream),
exposed communication (a transfer in flight, no compute), optimizer/other, or idle. Idle time is pipeline
bubble when the job is pipelined, "other" otherwise. Communication that runs under compute is overlapped.

The critical rank's compute ops also carry their seconds per kernel class (``Trace.class_s``, set by the
compute model where each kernel is timed); summed over its ops they split ``compute_s`` into GEMM,
attention, element-wise, FP8 cast and host-bound time, and give the optimizer update's time (inside
``other_s``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.engine.trace import Trace
from simulator.hardware.compute import KERNEL_CLASSES
from simulator.workload.ops import Category, CommKind

COMPUTE_CATEGORIES = {Category.FORWARD, Category.BACKWARD, Category.BACKWARD_INPUT,
                      Category.BACKWARD_WEIGHT, Category.RECOMPUTE}  # fmt: skip
# When several kinds of communication are exposed at once, the time goes to the first in this order.
EXPOSED_PRIORITY = (CommKind.TP, CommKind.CP, CommKind.EP, CommKind.PP, CommKind.DP)


@dataclass(frozen=True)
class StepMetrics:
    """Timing of one step on the critical rank, seconds."""

    step_time_s: float
    critical_rank: int
    compute_s: float
    exposed_comm_s: float
    overlapped_comm_s: float
    bubble_s: float
    other_s: float
    comm_s: dict[str, float]
    exposed_by_kind_s: dict[str, float]
    kernel_class_s: dict[str, float]  # KernelClass value → seconds on the critical rank


def _coverage(bounds: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For each elementary segment [bounds[i], bounds[i+1]), whether any interval covers it."""
    if starts.size == 0:
        return np.zeros(bounds.size - 1, dtype=bool)
    delta = np.zeros(bounds.size, dtype=np.int64)
    np.add.at(delta, np.searchsorted(bounds, starts), 1)
    np.add.at(delta, np.searchsorted(bounds, ends), -1)
    return np.cumsum(delta)[:-1] > 0


def step_metrics(trace: Trace, pipelined: bool) -> StepMetrics:
    """Breakdown of the step on the rank that finishes last."""
    step = float(trace.end_s.max()) if len(trace) else 0.0
    last = np.full(int(trace.rank.max()) + 1 if len(trace) else 0, -np.inf)
    np.maximum.at(last, trace.rank, trace.end_s)  # each rank's last end in one pass, not one scan per rank
    ends = {r: float(last[r]) if r < last.size else -np.inf for r in trace.ranks}
    crit = min(r for r, e in ends.items() if e >= step - 1e-12 * max(step, 1.0))
    rows = trace.select(crit)
    st, en = trace.start_s[rows], trace.end_s[rows]
    cat = np.array([trace.category[i] for i in rows])
    comm = np.array([trace.comm[i] for i in rows])
    bounds = np.unique(np.concatenate([[0.0, step], st, en]))
    width = np.diff(bounds)
    is_compute = np.isin(cat, [c.value for c in COMPUTE_CATEGORIES])
    busy = _coverage(bounds, st[is_compute], en[is_compute])
    other_busy = _coverage(bounds, st[cat == Category.OPTIMIZER.value], en[cat == Category.OPTIMIZER.value])
    kinds = {k: _coverage(bounds, st[comm == k.value], en[comm == k.value]) for k in EXPOSED_PRIORITY}
    any_comm = np.logical_or.reduce(list(kinds.values()))
    exposed = ~busy & ~other_busy & any_comm
    idle = ~busy & ~other_busy & ~any_comm
    exposed_by: dict[str, float] = {}
    claimed = np.zeros_like(exposed)
    for k in EXPOSED_PRIORITY:
        mine = exposed & kinds[k] & ~claimed
        exposed_by[k.value] = float(width[mine].sum())
        claimed |= mine
    idle_s = float(width[idle].sum())
    # tensor-parallel collectives folded into compute ops (host-local, uncontended): waited-for time is
    # exposed communication, not compute; hidden time is overlapped communication
    inline_exposed = float(trace.inline_comm_s[rows].sum())
    inline_hidden = float(trace.inline_hidden_s[rows].sum())
    comm_s = {k.value: float(width[v].sum()) for k, v in kinds.items()}
    comm_s[CommKind.TP.value] += inline_exposed + inline_hidden
    exposed_by[CommKind.TP.value] += inline_exposed
    per_class = trace.class_s[rows].sum(axis=0)  # communication rows are zeros
    return StepMetrics(
        step_time_s=step,
        critical_rank=crit,
        compute_s=float(width[busy].sum()) - inline_exposed,
        exposed_comm_s=float(width[exposed].sum()) + inline_exposed,
        overlapped_comm_s=float(width[(busy | other_busy) & any_comm].sum()) + inline_hidden,
        bubble_s=idle_s if pipelined else 0.0,
        other_s=float(width[~busy & other_busy].sum()) + (0.0 if pipelined else idle_s),
        comm_s=comm_s,
        exposed_by_kind_s=exposed_by,
        kernel_class_s={c.value: float(v) for c, v in zip(KERNEL_CLASSES, per_class, strict=True)},
    )
