"""Zero-bubble ZB-H2 (Qi et al. 2024, "Zero Bubble Pipeline Parallelism", arXiv 2401.10241, Sec. 3.1, Fig. 3
bottom, Table 1).

ZB-H1 (zero_bubble.py) keeps 1F1B's memory; ZB-H2 spends memory to remove the bubble before the first B:
stage s runs 2(p − s) − 1 warm-up forwards instead of p − s − 1. With unit passes the first input gradient
reaches stage s at 2p − 1 − s (the last stage's F0 ends at p, its B0 at p + 1, one hop per stage back), and
stage s, starting at s, fills the 2(p − s) − 1 slots in between with forwards.

The order after the warm-up is the handcrafted one of the authors' scheduler (sail-sg/zero-bubble-pipeline-
parallelism, ``megatron/core/pipeline_parallel/zerobubble/scheduler/zb.py``, ``Graph.manual_order`` and the
order drawn in its comment: ``fff…f bfbf…bf bwbw…bw ww…w``): B-F pairs while forwards remain, then B-W pairs,
then the remaining Ws; ZB-H2's memory limit of 2p − 1 micro-batches (Table 1, "Peak memory (2p − 1)M_B")
puts a W before a forward whenever that forward would exceed it, so the first stage runs B-W-F rounds and
later stages postpone 2s more Ws into the cool-down (the "parallelogram" of Fig. 3). The bubble is
(p − 1)·(T_F + T_B − 2T_W) (Table 1) while T_W ≤ T_F; each stage holds min(2p − 1, m) micro-batches, about
twice ZB-H1's p.
"""

from __future__ import annotations

from functools import cache
from typing import ClassVar

from simulator.parallel.schedules.base import Pass, Schedule, Task
from simulator.parallel.schedules.zero_bubble import peak_in_flight
from simulator.registry import SCHEDULES


def zb_h2_order(stage: int, stages: int, micro_batches: int) -> list[Task]:
    """Warm-up of 2(p − s) − 1 forwards, B-F pairs (a W first when the next F would hold more than
    2p − 1 micro-batches), B-W pairs once the forwards are done, then the remaining Ws."""
    m, cap = micro_batches, 2 * stages - 1
    warmup = min(2 * (stages - stage) - 1, m)
    out = [Task(Pass.F, i) for i in range(warmup)]
    next_f, next_w = warmup, 0
    for i in range(m):
        out.append(Task(Pass.B, i))
        if next_f < m:
            if next_f - next_w + 1 > cap:  # held from F to W: one more F would pass the 2p − 1 limit
                out.append(Task(Pass.W, next_w))
                next_w += 1
            out.append(Task(Pass.F, next_f))
            next_f += 1
        else:
            out.append(Task(Pass.W, next_w))
            next_w += 1
    out += [Task(Pass.W, j) for j in range(next_w, m)]
    return out


@SCHEDULES.register("zb-h2")
class ZeroBubbleH2(Schedule):
    """ZB-H2: no bubble before the first B, at about twice ZB-H1's activation memory."""

    name = "zb-h2"
    splits_backward: ClassVar[bool] = True

    def tasks(self, stage: int, stages: int, micro_batches: int, chunks: int) -> list[Task]:
        """F, B and W tasks of ``stage``."""
        return zb_h2_order(stage, stages, micro_batches)

    def in_flight(self, stage: int, stages: int, micro_batches: int, chunks: int) -> float:
        """min(2p − 1, m) micro-batches on every stage, held from F to W."""
        return _in_flight(stage, stages, micro_batches)


@cache
def _in_flight(stage: int, stages: int, micro_batches: int) -> float:
    # memoised as ZB-H1's: a search asks it for every stage of thousands of layouts sharing (p, m)
    return float(peak_in_flight(zb_h2_order(stage, stages, micro_batches)))
