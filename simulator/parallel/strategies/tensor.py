"""Megatron-LM tensor parallelism (Shoeybi et al. 2019, arXiv 1909.08053, Fig. 3).

Each transformer block (attention, MLP) is a column-parallel GEMM followed by a row-parallel GEMM. The
forward pass all-reduces the block output (operator g); the backward pass all-reduces the gradient of the
block input (operator f). As in Megatron-LM (``async_tensor_model_parallel_allreduce``), that backward
all-reduce runs concurrently with the weight-gradient GEMM.
"""

from __future__ import annotations

from simulator.errors import InfeasibleConfig
from simulator.parallel.strategies.base import BuildContext, TensorStrategy
from simulator.registry import STRATEGIES
from simulator.workload.ops import Axis, CollectiveKind, CommKind
from simulator.workload.steps import CommStep, Step


def validate_tensor_shapes(ctx: BuildContext) -> None:
    """Megatron's divisibility rules for splitting heads, KV groups and the FFN over ``tp`` ranks."""
    m, tp = ctx.model, ctx.tp
    if m.heads % tp:
        raise InfeasibleConfig(f"tp={tp} does not divide heads={m.heads}", field="parallelism.tp")
    if m.kv_heads % tp and tp % m.kv_heads:
        raise InfeasibleConfig(
            f"tp={tp} and kv_heads={m.kv_heads}: one must divide the other", field="parallelism.tp"
        )
    if m.ffn_hidden % tp:
        raise InfeasibleConfig(f"tp={tp} does not divide ffn_hidden={m.ffn_hidden}", field="parallelism.tp")


@STRATEGIES.register("tensor")
class TensorParallel(TensorStrategy):
    """Tensor parallelism without sequence parallelism: all-reduces of the full activation."""

    name = "tensor"

    def validate(self, ctx: BuildContext) -> None:
        """Heads, KV groups and FFN must split evenly; communication overlap needs sequence parallelism."""
        validate_tensor_shapes(ctx)
        if ctx.par.tp_comm_overlap and ctx.tp > 1 and not ctx.par.sequence_parallel:
            raise InfeasibleConfig(
                "tp_comm_overlap needs sequence_parallel: true (as Megatron's --tp-comm-overlap)",
                field="parallelism.tp_comm_overlap",
            )

    def _activation_bytes(self, ctx: BuildContext) -> float:
        return float(ctx.tokens * ctx.model.hidden * ctx.e)

    def norm_tokens(self, ctx: BuildContext) -> int:
        """Every TP rank runs norms and dropout on all tokens (replicated)."""
        return ctx.tokens

    def block_input_forward(self, ctx: BuildContext, tag: str) -> list[Step]:
        """f is the identity in the forward pass."""
        return []

    def block_output_forward(self, ctx: BuildContext, tag: str) -> list[Step]:
        """g: all-reduce the row-parallel output."""
        if ctx.tp == 1:
            return []
        return [
            CommStep(
                f"{tag}.allreduce", CollectiveKind.ALL_REDUCE, CommKind.TP, Axis.TP, self._activation_bytes(ctx)
            )
        ]

    def block_output_backward(self, ctx: BuildContext, tag: str) -> list[Step]:
        """g is the identity in the backward pass."""
        return []

    def block_input_backward_pre(self, ctx: BuildContext, tag: str) -> list[Step]:
        """Nothing to gather before the input-gradient GEMM."""
        return []

    def block_input_backward_post(self, ctx: BuildContext, tag: str) -> list[Step]:
        """f: all-reduce the input gradient, overlapped with the weight-gradient GEMM."""
        if ctx.tp == 1:
            return []
        nbytes = self._activation_bytes(ctx)
        return [CommStep(f"{tag}.grad_allreduce", CollectiveKind.ALL_REDUCE, CommKind.TP, Axis.TP, nbytes, 1)]
