"""Megatron sequence parallelism (Korthikanti et al. 2022, arXiv 2205.05198, Sec. 4.2.2, Fig. 5).

Norms, dropout and residual adds run on 1/tp of the sequence. The forward all-reduce becomes a
reduce-scatter after the row-parallel GEMM and an all-gather before the column-parallel GEMM (same bytes on
the wire, no redundant element-wise work). In the backward pass Megatron all-gathers the block input again for
the weight gradient, overlapped with the input-gradient GEMM, then reduce-scatters the input gradient,
overlapped with the weight-gradient GEMM (``LinearWithGradAccumulationAndAsyncCommunication``).
"""

from __future__ import annotations

from simulator.errors import InfeasibleConfig
from simulator.parallel.strategies.base import BuildContext
from simulator.parallel.strategies.tensor import TensorParallel
from simulator.registry import STRATEGIES
from simulator.workload.ops import Axis, CollectiveKind, CommKind
from simulator.workload.steps import CommStep, Step

AG, RS = CollectiveKind.ALL_GATHER, CollectiveKind.REDUCE_SCATTER


@STRATEGIES.register("sequence")
class SequenceParallel(TensorParallel):
    """Tensor parallelism with sequence-parallel norms and dropout."""

    name = "sequence"

    def output_overlapped(self, ctx: BuildContext) -> bool:
        """With ``tp_comm_overlap`` (Megatron --tp-comm-overlap, Transformer Engine userbuffers) the
        reduce-scatter is pipelined with the row-parallel GEMM producing it, and the all-gathers with the
        GEMMs consuming them: each pair takes max(GEMM, communication) instead of the sum."""
        return ctx.par.tp_comm_overlap and ctx.tp > 1

    def validate(self, ctx: BuildContext) -> None:
        """The sequence shard of each context-parallel rank must split over tp ranks."""
        super().validate(ctx)
        if ctx.tokens % ctx.tp:
            raise InfeasibleConfig(
                f"sequence parallelism: tp={ctx.tp} does not divide the {ctx.tokens} tokens of a micro-batch "
                "shard",
                field="parallelism.sequence_parallel",
            )

    def norm_tokens(self, ctx: BuildContext) -> int:
        """Norms and dropout see 1/tp of the tokens."""
        return ctx.tokens // ctx.tp

    def _comm(self, ctx: BuildContext, name: str, kind: CollectiveKind, join: int = 0) -> list[Step]:
        if ctx.tp == 1:
            return []
        return [CommStep(name, kind, CommKind.TP, Axis.TP, self._activation_bytes(ctx), join)]

    def block_input_forward(self, ctx: BuildContext, tag: str) -> list[Step]:
        """All-gather the sequence shards before the column-parallel GEMM (under it, when overlapped)."""
        return self._comm(ctx, f"{tag}.allgather", AG, join=1 if self.output_overlapped(ctx) else 0)

    def block_output_forward(self, ctx: BuildContext, tag: str) -> list[Step]:
        """Reduce-scatter the row-parallel output back to sequence shards (the layer builder places it
        under the GEMM when ``output_overlapped``)."""
        return self._comm(ctx, f"{tag}.reducescatter", RS, join=1 if self.output_overlapped(ctx) else 0)

    def block_output_backward(self, ctx: BuildContext, tag: str) -> list[Step]:
        """All-gather the incoming gradient shards (under the input-gradient GEMM, when overlapped)."""
        return self._comm(ctx, f"{tag}.grad_allgather", AG, join=1 if self.output_overlapped(ctx) else 0)

    def block_input_backward_pre(self, ctx: BuildContext, tag: str) -> list[Step]:
        """All-gather the saved input again for the weight gradient, hidden under the input-gradient GEMM."""
        return self._comm(ctx, f"{tag}.input_allgather", AG, join=1)

    def block_input_backward_post(self, ctx: BuildContext, tag: str) -> list[Step]:
        """Reduce-scatter the input gradient, hidden under the weight-gradient GEMM."""
        return self._comm(ctx, f"{tag}.grad_reducescatter", RS, join=1)
