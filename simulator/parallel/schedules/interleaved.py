"""Interleaved 1F1B (Narayanan et al. 2021, arXiv 2104.04473 Sec. 2.2.2, Fig. 4 bottom; Megatron-LM
``forward_backward_pipelining_with_interleaving``).

Each rank holds v model chunks (virtual stages c·p + s). Micro-batches advance in groups of p through chunk 0,
then chunk 1 …; the bubble shrinks to (p−1)/(v·m) of the ideal time at the cost of v× more pipeline
messages. Megatron requires m to be a multiple of p.
"""

from __future__ import annotations

from simulator.errors import InfeasibleConfig
from simulator.parallel.schedules.base import Pass, Schedule, Task
from simulator.parallel.schedules.one_f_one_b import one_f_one_b_order
from simulator.registry import SCHEDULES


def virtual_task(k: int, stages: int, chunks: int, forward: bool) -> tuple[int, int]:
    """(micro-batch, chunk) of the k-th forward (or backward) virtual micro-batch of a rank."""
    group = k // (stages * chunks)
    chunk = (k // stages) % chunks
    if not forward:
        chunk = chunks - 1 - chunk
    return group * stages + k % stages, chunk


def _warmup(stage: int, stages: int, micro_batches: int, chunks: int) -> int:
    """Megatron: all forwards first when m == p, else (p − s − 1)·2 + (v − 1)·p, capped at m·v."""
    total = micro_batches * chunks
    if micro_batches == stages:
        return total
    return min((stages - stage - 1) * 2 + (chunks - 1) * stages, total)


@SCHEDULES.register("interleaved")
class Interleaved(Schedule):
    """Megatron's interleaved schedule with ``virtual_stages`` chunks per rank."""

    name = "interleaved"
    chunked = True
    merges_steady_state = True

    def validate(self, stages: int, micro_batches: int, chunks: int) -> None:
        """Megatron's constraints: more than one stage, and micro-batches a multiple of the stages."""
        if stages == 1:
            raise InfeasibleConfig("interleaved schedule needs pp > 1", field="parallelism.schedule")
        if micro_batches % stages:
            raise InfeasibleConfig(
                f"interleaved schedule needs micro-batches ({micro_batches}) to be a multiple of pp={stages}",
                field="parallelism.schedule",
            )

    def tasks(self, stage: int, stages: int, micro_batches: int, chunks: int) -> list[Task]:
        """Warm-up of (p−s−1)·2 + (v−1)·p virtual forwards, then 1F1B over virtual micro-batches."""
        total = micro_batches * chunks
        warmup = _warmup(stage, stages, micro_batches, chunks)
        out = []
        for kind, k in one_f_one_b_order(warmup, total):
            mb, chunk = virtual_task(k, stages, chunks, kind is Pass.F)
            out.append(Task(kind, mb, chunk))
        return out

    def in_flight(self, stage: int, stages: int, micro_batches: int, chunks: int) -> float:
        """Warm-up virtual micro-batches + 1, each holding 1/v of the stage's layers."""
        total = micro_batches * chunks
        return min(_warmup(stage, stages, micro_batches, chunks) + 1, total) / chunks
