"""1F1B (PipeDream-Flush; Narayanan et al. 2021, arXiv 2104.04473 Fig. 4 top).

Stage s runs min(p − s − 1, m) warm-up forwards, then alternates one forward and one backward, then drains
the remaining backwards. The bubble is (p − 1) forward+backward times, (p−1)/(m+p−1) of the step for
uniform stages, and stage s holds at most p − s micro-batches of activations.
"""

from __future__ import annotations

from simulator.parallel.schedules.base import Pass, Schedule, Task
from simulator.registry import SCHEDULES


def one_f_one_b_order(warmup: int, total: int) -> list[tuple[Pass, int]]:
    """(pass, index) sequence: ``warmup`` forwards, then 1F1B, then the remaining backwards."""
    order = [(Pass.F, i) for i in range(warmup)]
    for i in range(total - warmup):
        order += [(Pass.F, warmup + i), (Pass.B, i)]
    order += [(Pass.B, i) for i in range(total - warmup, total)]
    return order


@SCHEDULES.register("1f1b")
class OneFOneB(Schedule):
    """Non-interleaved 1F1B."""

    name = "1f1b"
    merges_steady_state = True  # without pipelining only (ProgramFactory._overlap_pairs)

    def tasks(self, stage: int, stages: int, micro_batches: int, chunks: int) -> list[Task]:
        """Warm-up, steady 1F1B, cool-down."""
        warmup = min(stages - stage - 1, micro_batches)
        return [Task(kind, i) for kind, i in one_f_one_b_order(warmup, micro_batches)]

    def in_flight(self, stage: int, stages: int, micro_batches: int, chunks: int) -> float:
        """Stage s holds p − s micro-batches (the first stage holds p)."""
        return float(min(stages - stage, micro_batches))
