"""GPipe (Huang et al. 2019, arXiv 1811.06965): all forwards, then all backwards. Same bubble as 1F1B,
(p−1)/(m+p−1) of the step, but every stage holds all m micro-batches of activations."""

from __future__ import annotations

from simulator.parallel.schedules.base import Pass, Schedule, Task
from simulator.registry import SCHEDULES


@SCHEDULES.register("gpipe")
class GPipe(Schedule):
    """Fill, then drain."""

    name = "gpipe"

    def tasks(self, stage: int, stages: int, micro_batches: int, chunks: int) -> list[Task]:
        """m forwards, then m backwards in reverse micro-batch order."""
        fwd = [Task(Pass.F, i) for i in range(micro_batches)]
        return fwd + [Task(Pass.B, i) for i in reversed(range(micro_batches))]

    def in_flight(self, stage: int, stages: int, micro_batches: int, chunks: int) -> float:
        """All m micro-batches."""
        return float(micro_batches)
