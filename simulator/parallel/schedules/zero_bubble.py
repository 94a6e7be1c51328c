"""Zero-bubble ZB-H1 (Qi et al. 2023, "Zero Bubble Pipeline Parallelism", arXiv 2401.10241, Sec. 3.1, Fig. 3).

The backward pass is split into B (input gradients, on the critical path between stages) and W (weight
gradients, needed by nobody but the optimizer). The order is 1F1B's with B for the backward, and stage s
postpones its first s W passes: each runs s rounds after its B, and the postponed ones fill the cool-down,
where 1F1B idles. Stage s then holds (p − s − 1) + 1 + s = p micro-batches (a micro-batch is held from its F
to its W), the same peak as 1F1B's first stage; the bubble falls from (p − 1)·(T_F + T_B + T_W) to
(p − 1)·(T_F + T_B − T_W) (docs/reference.md, "Pipeline schedules") while T_W ≤ T_F. With longer W passes the
first stage's wait for its first input gradient, (p − 1)·T_B, bounds it: (p − 1)·max(T_B, T_F + T_B − T_W).
"""

from __future__ import annotations

from functools import cache
from typing import ClassVar

from simulator.parallel.schedules.base import Pass, Schedule, Task
from simulator.registry import SCHEDULES


def zb_h1_order(stage: int, stages: int, micro_batches: int) -> list[Task]:
    """Warm-up forwards, then F-B rounds each followed by the W of the micro-batch ``stage`` rounds back,
    then the postponed Ws."""
    m = micro_batches
    warmup = min(stages - stage - 1, m)
    out = [Task(Pass.F, i) for i in range(warmup)]
    next_w = 0
    for i in range(m):
        if warmup + i < m:
            out.append(Task(Pass.F, warmup + i))
        out.append(Task(Pass.B, i))
        if i - stage >= next_w:
            out.append(Task(Pass.W, next_w))
            next_w += 1
    out += [Task(Pass.W, j) for j in range(next_w, m)]
    return out


def peak_in_flight(tasks: list[Task]) -> int:
    """Most (micro-batch, chunk) passes held at once: each from its forward until its weight gradient, its
    whole backward (BW), or its backward when the schedule does not split it."""
    split = any(t.kind is Pass.W for t in tasks)
    held = peak = 0
    for t in tasks:
        if t.kind is Pass.F:
            held += 1
        elif t.kind is Pass.BW or t.kind is (Pass.W if split else Pass.B):
            held -= 1
        peak = max(peak, held)
    return peak


@SCHEDULES.register("zero-bubble")
class ZeroBubbleH1(Schedule):
    """ZB-H1: 1F1B's memory, a third of its bubble when T_F = T_B = T_W."""

    name = "zero-bubble"
    splits_backward: ClassVar[bool] = True

    def tasks(self, stage: int, stages: int, micro_batches: int, chunks: int) -> list[Task]:
        """F, B and W tasks of ``stage``."""
        return zb_h1_order(stage, stages, micro_batches)

    def in_flight(self, stage: int, stages: int, micro_batches: int, chunks: int) -> float:
        """p micro-batches on every stage (fewer when m < p)."""
        return _in_flight(stage, stages, micro_batches)


@cache
def _in_flight(stage: int, stages: int, micro_batches: int) -> float:
    # memoised: a search asks for the memory of every stage of thousands of layouts sharing (p, m), and
    # walking the whole order each time was most of the search's pruning time (issue #11)
    return float(peak_in_flight(zb_h1_order(stage, stages, micro_batches)))
