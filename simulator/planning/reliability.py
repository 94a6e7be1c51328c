"""Interruptions and checkpoints of a long training job: Young's checkpoint interval and the time lost.

Failure rate. Llama 3 405B pre-training (Dubey et al. 2024, arXiv 2407.21783, Sec. 3.3.4) saw 419
unexpected interruptions in 54 days on 16,384 H100 GPUs in 8-GPU servers, i.e. 2,048 nodes:
λ = 419 / (2,048 nodes × 54 × 24 h) = 1.58e-4 interruptions per node-hour, a node MTBF of about 6,300 h
(264 days). With independent failures a job on n nodes is interrupted at n·λ: M = 1 / (n·λ) (docs/reference.md,
failures and checkpoints). Hosts of another size are counted as nodes all the same.

Checkpoints. Young (1974): writing a checkpoint takes δ; checkpointing every τ* = √(2·δ·M) minimises the
fraction of time lost, waste(τ) = δ/τ + τ/(2M) + R/M: the writes, the work redone after a failure (half an
interval on average) and the restarts (R, here a restart time plus reading the checkpoint back at the
write bandwidth). The job's wall time is then ideal / (1 − waste). Daly (2006) adds higher-order terms
that matter only when δ is not small against M.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simulator.errors import InfeasibleConfig
from simulator.planning import SECONDS_PER_HOUR

LLAMA3_UNEXPECTED_INTERRUPTIONS = 419  # arXiv 2407.21783, Sec. 3.3.4 (466 in all, 47 planned)
LLAMA3_DAYS = 54.0
LLAMA3_NODES = 16_384 // 8  # 16,384 H100 in 8-GPU Grand Teton servers (Sec. 3.3.1)
NODE_FAILURES_PER_HOUR = LLAMA3_UNEXPECTED_INTERRUPTIONS / (LLAMA3_NODES * LLAMA3_DAYS * 24.0)
# Checkpoint content per parameter: 16-bit weights (2) + fp32 master weights, Adam m and v (12): the ZeRO
# paper's 16 bytes of mixed-precision Adam state less the gradients, which a checkpoint does not keep
# (Rajbhandari et al. 2020, Sec. 3.1; docs/reference.md, memory).
CHECKPOINT_BYTES_PER_PARAM = 14.0
# Write bandwidth per node: Llama 3's Tectonic storage sustains 2 TB/s for up to 16,384 GPUs (2,048 nodes),
# 0.98 GB/s per node (arXiv 2407.21783, Sec. 3.3.1: 240 PB on 7,500 servers, 2 TB/s sustained, 7 TB/s peak).
STORAGE_GBPS_PER_NODE = 1.0
# Time to get a failed job running again (rescheduling, replacing the node, process start, NCCL set-up),
# before the checkpoint is read: an assumption (no published figure at this scale); make it an input.
RESTART_MINUTES = 10.0


@dataclass(frozen=True)
class Reliability:
    """Failures, checkpoints and the fraction of wall time they cost a job."""

    nodes: int
    mtbf_s: float  # M: mean time between interruptions of the whole job
    checkpoint_bytes: float
    checkpoint_write_s: float  # δ
    interval_s: float  # τ*: Young's checkpoint interval
    restart_s: float  # R: restart plus reading the checkpoint back

    @property
    def checkpoint_fraction(self) -> float:
        """δ/τ: time spent writing checkpoints."""
        return self.checkpoint_write_s / self.interval_s

    @property
    def lost_work_fraction(self) -> float:
        """τ/(2M): work redone after interruptions (half an interval each, on average)."""
        return self.interval_s / (2.0 * self.mtbf_s)

    @property
    def restart_fraction(self) -> float:
        """R/M: time spent restarting."""
        return self.restart_s / self.mtbf_s

    @property
    def waste_fraction(self) -> float:
        """Fraction of wall time lost: δ/τ + τ/(2M) + R/M."""
        return self.checkpoint_fraction + self.lost_work_fraction + self.restart_fraction


def job_mtbf_s(nodes: int, failures_per_node_hour: float = NODE_FAILURES_PER_HOUR) -> float:
    """Mean time between interruptions of a job on ``nodes`` nodes, seconds: 1 / (nodes × λ)."""
    return SECONDS_PER_HOUR / (nodes * failures_per_node_hour)


def young_interval_s(write_s: float, mtbf_s: float) -> float:
    """Young's optimal checkpoint interval √(2·δ·M), seconds."""
    return math.sqrt(2.0 * write_s * mtbf_s)


def waste_fraction(interval_s: float, write_s: float, mtbf_s: float, restart_s: float) -> float:
    """Fraction of time lost checkpointing every ``interval_s``: δ/τ + τ/(2M) + R/M."""
    return write_s / interval_s + interval_s / (2.0 * mtbf_s) + restart_s / mtbf_s


def reliability(
    nodes: int,
    params: float,
    *,
    storage_gbps_per_node: float = STORAGE_GBPS_PER_NODE,
    restart_minutes: float = RESTART_MINUTES,
) -> Reliability:
    """Young's plan for a job on ``nodes`` nodes training ``params`` parameters; every node writes its
    share of the checkpoint at ``storage_gbps_per_node`` GB/s. Raises when the overheads leave no time."""
    mtbf = job_mtbf_s(nodes)
    nbytes = params * CHECKPOINT_BYTES_PER_PARAM
    write = nbytes / (nodes * storage_gbps_per_node * 1e9)
    plan = Reliability(
        nodes, mtbf, nbytes, write, young_interval_s(write, mtbf), restart_minutes * 60.0 + write
    )  # fmt: skip
    if plan.waste_fraction >= 1.0:
        raise InfeasibleConfig(
            f"checkpoints and restarts take all the time: {nodes} nodes fail every {mtbf / 60:.1f} min, "
            f"a checkpoint takes {write:.0f} s to write and a restart {plan.restart_s / 60:.1f} min",
            field="--nodes",
        )
    return plan
