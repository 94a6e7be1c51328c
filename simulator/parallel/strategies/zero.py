"""ZeRO stages 1, 2 and 3 (Rajbhandari et al. 2020, arXiv 1910.02054; Megatron-LM's distributed optimizer;
PyTorch FSDP, Zhao et al. 2023, arXiv 2304.11277).

Stages 1 and 2: gradients are reduce-scattered so each data-parallel rank owns 1/d of them, updates its shard
of the optimizer state and parameters, then all-gathers the updated parameters: the same bytes as one
all-reduce (1× DP volume). Stage 1 keeps full gradient buffers, stage 2 frees the non-owned parts (a memory
difference only). With ``param_gather_overlap`` the all-gather runs under the next step's forward pass
(Megatron-Core ``--overlap-param-gather``): the builder issues one gather per layer at the start of the step
on the data-parallel stream, where it shares the network with everything else, and the first forward of each
layer waits for its own gather.

Stage 3 (FSDP ``FULL_SHARD``): parameters stay sharded; every micro-batch all-gathers each layer's
parameters before its forward and again before its backward (``reshard_after_forward``), and
reduce-scatters its gradients right after its backward. Per micro-batch that is 2 all-gathers and 1
reduce-scatter of the parameters, 1.5× the bytes of one all-reduce (ZeRO paper, Sec. 7.2.2). With
``param_gather_overlap`` the builder prefetches the next layer's gather under the current layer's compute
(FSDP ``forward_prefetch`` / ``BACKWARD_PRE``; DeepSpeed's prefetch bucket).
"""

from __future__ import annotations

from typing import ClassVar

from simulator.parallel.strategies.base import BuildContext
from simulator.parallel.strategies.data import DataParallel, grad_element_bytes, param_element_bytes
from simulator.registry import STRATEGIES
from simulator.workload.ops import Axis, CollectiveKind, CommKind
from simulator.workload.steps import PREFETCH, CommStep, Step


def _param_allgather(ctx: BuildContext, param_count: float, group: Axis, join_after: int = 0) -> list[Step]:
    nbytes = param_count * param_element_bytes(ctx)
    if nbytes <= 0:
        return []
    return [CommStep("param_allgather", CollectiveKind.ALL_GATHER, CommKind.DP, group, nbytes, join_after)]


@STRATEGIES.register("zero1")
class Zero1(DataParallel):
    """Sharded optimizer state: gradient reduce-scatter, parameter all-gather."""

    name = "zero1"
    zero_stage: ClassVar[int] = 1
    reduce_kind: ClassVar[CollectiveKind] = CollectiveKind.REDUCE_SCATTER
    shards: ClassVar[tuple[bool, bool, bool]] = (False, False, True)

    def step_prologue(self, ctx: BuildContext, param_count: float, group: Axis) -> list[Step]:
        """With ``param_gather_overlap``: the layer's share of the updated parameters, gathered under the
        forward pass (issued at the step start, waited for at the layer's first forward)."""
        if not ctx.par.param_gather_overlap:
            return []
        return _param_allgather(ctx, param_count, group, PREFETCH)

    def after_optimizer(self, ctx: BuildContext, param_count: float, group: Axis) -> list[Step]:
        """All-gather the updated 16-bit parameters (exposed unless overlapped with the next forward)."""
        if ctx.par.param_gather_overlap:
            return []
        return _param_allgather(ctx, param_count, group)

    def optimizer_shard(self, ctx: BuildContext, group_size: int) -> int:
        """The optimizer state and its update are split over the data-parallel group."""
        return group_size


@STRATEGIES.register("zero2")
class Zero2(Zero1):
    """Sharded optimizer state and gradients (communication as stage 1)."""

    name = "zero2"
    zero_stage: ClassVar[int] = 2
    shards: ClassVar[tuple[bool, bool, bool]] = (False, True, True)


@STRATEGIES.register("zero3")
class Zero3(Zero1):
    """Sharded parameters too: per-layer gathers before use, per-layer gradient reduce-scatters."""

    name = "zero3"
    zero_stage: ClassVar[int] = 3
    shards: ClassVar[tuple[bool, bool, bool]] = (True, True, True)

    def gathered_state_bytes(self, ctx: BuildContext, largest_unit: float) -> tuple[float, float]:
        """The layer in use and, when prefetching, the next one: their 16-bit weights and gradients whole."""
        live = 2 if ctx.par.param_gather_overlap else 1
        return live * largest_unit * param_element_bytes(ctx), live * largest_unit * grad_element_bytes(ctx)

    def bucket_bytes(self, ctx: BuildContext) -> float:
        """Gradients leave through per-layer reduce-scatters, not DDP buckets."""
        return 0.0

    def gradient_steps(self, ctx: BuildContext, grad_count: float, group: Axis, final: bool) -> list[Step]:
        """Nothing left to reduce at the end: each layer reduce-scattered its gradients already."""
        return []

    def layer_prologue(self, ctx: BuildContext, param_count: float, group: Axis, backward: bool) -> list[Step]:
        """All-gather the layer's parameters (blocking; the builder prefetches it when overlapped)."""
        return _param_allgather(ctx, param_count, group)

    def layer_epilogue(self, ctx: BuildContext, param_count: float, group: Axis) -> list[Step]:
        """Reduce-scatter the layer's gradients of this micro-batch, waited for before the optimizer."""
        nbytes = param_count * grad_element_bytes(ctx)
        if nbytes <= 0:
            return []
        rs = CollectiveKind.REDUCE_SCATTER
        return [CommStep("grad_reduce_scatter", rs, CommKind.DP, group, nbytes, join_after=-1)]

    def step_prologue(self, ctx: BuildContext, param_count: float, group: Axis) -> list[Step]:
        """Parameters are gathered per use, not once per step."""
        return []

    def after_optimizer(self, ctx: BuildContext, param_count: float, group: Axis) -> list[Step]:
        """Updated parameters stay sharded until their next use."""
        return []
