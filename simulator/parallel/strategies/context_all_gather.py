"""Context parallelism by all-gathering keys and values (Llama 3, arXiv 2407.21783 Sec. 3.3.2).

Each rank all-gathers the K/V of the whole sequence over the CP group, then computes attention for its own
(load-balanced) query chunks; the backward pass reduce-scatters the K/V gradients. The all-gather is exposed
but small for GQA models, which is why Llama 3 chose it.
"""

from __future__ import annotations

from simulator.parallel.strategies.base import BuildContext, ContextStrategy
from simulator.parallel.strategies.context_ring import require_flash
from simulator.registry import STRATEGIES
from simulator.workload.ops import Axis, CollectiveKind, CommKind
from simulator.workload.steps import CommStep, Step


@STRATEGIES.register("context_all_gather")
class AllGatherAttention(ContextStrategy):
    """K/V all-gather before attention, dK/dV reduce-scatter after its backward."""

    name = "context_all_gather"

    def validate(self, ctx: BuildContext) -> None:
        """Needs flash attention and a sequence that splits into 2·cp chunks."""
        require_flash(ctx)

    def gathered_kv_bytes(self, ctx: BuildContext, kv_width: int) -> float:
        """The whole sequence's 16-bit K and V, gathered for the layer being computed."""
        cp = ctx.dims.cp
        return 0.0 if cp == 1 else 2.0 * 2 * ctx.tokens * cp * kv_width

    def attention_forward(self, ctx: BuildContext, core: list[Step], kv_bytes: float) -> list[Step]:
        """All-gather the sequence's K/V (output size cp × local K/V), then attend."""
        cp = ctx.dims.cp
        if cp == 1:
            return core
        return [
            CommStep("cp_kv_allgather", CollectiveKind.ALL_GATHER, CommKind.CP, Axis.CP, kv_bytes * cp),
            *core,
        ]

    def attention_backward(self, ctx: BuildContext, core: list[Step], kv_bytes: float) -> list[Step]:
        """Gather K/V again (not kept), attend backward, reduce-scatter dK/dV."""
        cp = ctx.dims.cp
        if cp == 1:
            return core
        return [
            CommStep("cp_kv_allgather", CollectiveKind.ALL_GATHER, CommKind.CP, Axis.CP, kv_bytes * cp),
            *core,
            CommStep("cp_dkv_reducescatter", CollectiveKind.REDUCE_SCATTER, CommKind.CP, Axis.CP, kv_bytes * cp),
        ]
