"""DualPipeV (deepseek-ai/DualPipe, ``dualpipe/dualpipev.py`` and README): the "cut-in-half" V-shape variant of
DeepSeek-V3's DualPipe (DeepSeek-AI 2024, arXiv 2412.19437 Sec. 3.2.1; Sea AI Lab's "Cut-in-half" post),
with one copy of the parameters.

Placement. Each of the P pipeline ranks holds two chunks placed as a V: rank s holds virtual stage s (chunk 0,
"phase 0", going down the ranks) and virtual stage 2P − 1 − s (chunk 1, "phase 1", coming back up). The
first rank holds both the embedding (virtual stage 0) and the loss (virtual stage 2P − 1); on the last rank
chunk 0's output is chunk 1's input, handed over without a transfer (``_forward_compute_chunk``:
``if self.is_last_rank and phase == 0: self.input_chunks[1].append(...)``).

Order. ``DualPipeV.step`` in eight steps for rank r of P with m ≥ 2P micro-batches: (1) 2(P − r − 1) F0;
(2) r + 1 pairs F0 F1; (3) P − r − 1 rounds B1 W F1, the backward split (zero bubble, ``enable_zb=True``) and
its W run at once; (4) m − 2P + r + 1 rounds F0&B1, F1&B0 (a forward chunk and a backward chunk run as one
overlapped pair, the backward whole); (5) P − r − 1 rounds B1, F1&B0; (6) r + 1 pairs B1 B0, split from the
middle pair on (``enable_zb`` set at i = (r + 1) // 2, before B0 on even ranks, before B1 on odd ones);
(7) P − r − 1 rounds W B0 (split); (8) r + 1 Ws. Ws pop the split backwards' weight gradients first-in
first-out (``WeightGradStore``). Whole backwards are ``Pass.BW`` tasks, split ones ``Pass.B`` + ``Pass.W``.

Bubble (README, "Pipeline Bubbles and Memory Usage Comparison", with PP = 2P virtual stages):
(PP/2 − 1)·(F&B + B − 3W), F, B, W per chunk, B the whole backward; activations (PP + 1) chunks on the first
rank, i.e. (2P + 1)/2 of a rank's layers.

Not modelled: the overlap DualPipe is built for. The reference overlaps the forward chunk's and the backward
chunk's communication (MoE all-to-all dispatch/combine, pipeline sends) with the other's computation inside
``overlapped_forward_backward``, which each model writes for itself; without it the reference runs the
forward then the backward (``_forward_backward_compute_chunk``), which is what this engine, with one compute
stream, runs: F&B = F + B here, and the pair's expert-parallel all-to-alls stay as exposed as they are under
1F1B. As in the reference, a pair starts once both its receives are in (``_forward_backward_chunk`` posts
both and ``_commit_and_wait_comm`` waits for them): the pair's forward is a ``Task`` with ``paired`` set.
With that wait the README's bubble formula is exact for F&B = F + B (tests/test_dualpipev.py).
"""

from __future__ import annotations

from collections import deque
from functools import cache
from typing import ClassVar

from simulator.errors import InfeasibleConfig
from simulator.parallel.schedules.base import Pass, Schedule, Task
from simulator.parallel.schedules.zero_bubble import peak_in_flight
from simulator.registry import SCHEDULES


class _Emitter:
    """Replays ``DualPipeV.step``'s calls, counting micro-batches per phase as the reference's
    ``current_f_chunk_id`` / ``current_b_chunk_id`` do and queueing split backwards' Ws FIFO."""

    def __init__(self) -> None:
        self.out: list[Task] = []
        self.f = [0, 0]
        self.b = [0, 0]
        self.w: deque[tuple[int, int]] = deque()

    def fwd(self, phase: int, paired: bool = False) -> None:
        self.out.append(Task(Pass.F, self.f[phase], phase, paired))
        self.f[phase] += 1

    def bwd(self, phase: int, zb: bool = False) -> None:
        mb = self.b[phase]
        self.b[phase] += 1
        if zb:
            self.out.append(Task(Pass.B, mb, phase))
            self.w.append((mb, phase))
        else:
            self.out.append(Task(Pass.BW, mb, phase))

    def weight(self) -> None:
        mb, phase = self.w.popleft()
        self.out.append(Task(Pass.W, mb, phase))


def dualpipev_order(rank: int, ranks: int, micro_batches: int) -> list[Task]:
    """The tasks of ``rank`` in the order ``DualPipeV.step`` runs them (chunk = phase)."""
    e, r, p, m = _Emitter(), rank, ranks, micro_batches
    for _ in range((p - r - 1) * 2):  # step 1: nF0
        e.fwd(0)
    for _ in range(r + 1):  # step 2: nF0F1
        e.fwd(0)
        e.fwd(1)
    for _ in range(p - r - 1):  # step 3: nB1W1F1 (zero bubble)
        e.bwd(1, zb=True)
        e.weight()
        e.fwd(1)
    for i in range(m - 2 * p + r + 1):  # step 4 (main): nF0B1F1B0, two F&B pairs
        e.fwd(0, paired=not (i == 0 and r == p - 1))  # "We don't overlap these two chunks" (last rank, i = 0)
        e.bwd(1)
        e.fwd(1, paired=True)
        e.bwd(0)
    for _ in range(p - r - 1):  # step 5: nB1F1B0
        e.bwd(1)
        e.fwd(1, paired=True)
        e.bwd(0)
    step_6, zb = r + 1, False
    for i in range(step_6):  # step 6: nB1B0, the second half split
        if i == step_6 // 2 and r % 2 == 1:
            zb = True
        e.bwd(1, zb)
        if i == step_6 // 2 and r % 2 == 0:
            zb = True
        e.bwd(0, zb)
    for _ in range(p - r - 1):  # step 7: nWB0 (zero bubble)
        e.weight()
        e.bwd(0, zb=True)
    for _ in range(r + 1):  # step 8: nW
        e.weight()
    # the reference asserts WeightGradStore.funcs_queue.empty()
    assert not e.w, "every split backward's W ran"
    return e.out


@SCHEDULES.register("dualpipev")
class DualPipeV(Schedule):
    """DualPipeV: two chunks per rank in a V, DeepSeek-V3's DualPipe cut in half."""

    name = "dualpipev"
    splits_backward: ClassVar[bool] = True
    chunked = True

    def validate(self, stages: int, micro_batches: int, chunks: int) -> None:
        """Two chunks per rank, and at least 2P micro-batches (``assert num_chunks >= num_ranks * 2``)."""
        if chunks != 2:
            raise InfeasibleConfig(
                f"dualpipev holds two chunks per rank (a V), got virtual_stages={chunks}",
                field="parallelism.virtual_stages",
            )
        if micro_batches < 2 * stages:
            raise InfeasibleConfig(
                f"dualpipev needs at least 2·pp = {2 * stages} micro-batches, got {micro_batches}",
                field="parallelism.schedule",
            )

    def virtual_stage(self, stage: int, chunk: int, stages: int) -> int:
        """The V: chunk 0 of rank s is virtual stage s, chunk 1 is 2P − 1 − s."""
        return stage if chunk == 0 else 2 * stages - 1 - stage

    def stage_of(self, virtual_stage: int, stages: int) -> int:
        """Virtual stages 0 … P − 1 go down the ranks, P … 2P − 1 come back up."""
        return virtual_stage if virtual_stage < stages else 2 * stages - 1 - virtual_stage

    def tasks(self, stage: int, stages: int, micro_batches: int, chunks: int) -> list[Task]:
        """F, B, W and whole-backward tasks of ``stage`` (chunk 0 and 1 are the reference's phases)."""
        return dualpipev_order(stage, stages, micro_batches)

    def in_flight(self, stage: int, stages: int, micro_batches: int, chunks: int) -> float:
        """Peak (micro-batch, chunk) activations held, each half a rank's layers: (2P + 1)/2 on rank 0."""
        return _in_flight(stage, stages, micro_batches)


@cache
def _in_flight(stage: int, stages: int, micro_batches: int) -> float:
    # memoised as ZB-H1's: a search asks it for every stage of thousands of layouts sharing (p, m)
    return peak_in_flight(dualpipev_order(stage, stages, micro_batches)) / 2
