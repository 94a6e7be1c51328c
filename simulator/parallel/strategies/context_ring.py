"""Context parallelism with ring attention (Liu et al. 2023, arXiv 2310.01889; Megatron-Core / Transformer
Engine ``cp_comm_type=p2p``).

The sequence is split over ``cp`` ranks (load-balanced for causal masking, so every rank does 1/cp of the
attention work). Attention runs in ``cp`` steps: at each step a rank attends its queries to one K/V block
while it sends that block to the next rank and receives the following one, so the transfer hides under the
block's compute. The backward pass passes K/V and their gradient accumulators around the ring (2× bytes).
"""

from __future__ import annotations

from dataclasses import replace

from simulator.errors import InfeasibleConfig
from simulator.parallel.strategies.base import BuildContext, ContextStrategy
from simulator.registry import STRATEGIES
from simulator.workload.ops import Axis, CollectiveKind, CommKind
from simulator.workload.steps import CommStep, KernelStep, Step


def split_kernels(core: list[Step], parts: int, tag: str) -> list[list[Step]]:
    """The attention core cut into ``parts`` equal blocks (each with its own launch)."""
    blocks: list[list[Step]] = [[] for _ in range(parts)]
    for step in core:
        assert isinstance(step, KernelStep)
        part = step.time.split(parts)  # keeps the kernel's seconds per class
        for i in range(parts):
            blocks[i].append(
                replace(step, name=f"{step.name}.{tag}{i}", time=part, model_flops=step.model_flops / parts)
            )
    return blocks


def require_flash(ctx: BuildContext) -> None:
    """Context parallelism is implemented on fused attention kernels only."""
    if ctx.dims.cp > 1 and not ctx.training.flash_attention:
        raise InfeasibleConfig(
            "cp > 1 needs flash attention (training.flash_attention: true)", field="parallelism.cp"
        )
    if ctx.training.seq_len % (2 * ctx.dims.cp) and ctx.dims.cp > 1:
        raise InfeasibleConfig(
            f"cp={ctx.dims.cp}: seq_len={ctx.training.seq_len} must split into 2·cp equal chunks",
            field="parallelism.cp",
        )


@STRATEGIES.register("context_ring")
class RingAttention(ContextStrategy):
    """K/V blocks passed around the CP ring by send/recv, overlapped with attention compute."""

    name = "context_ring"

    def validate(self, ctx: BuildContext) -> None:
        """Needs flash attention and a sequence that splits into 2·cp chunks."""
        require_flash(ctx)

    def _ring(self, ctx: BuildContext, core: list[Step], nbytes: float, tag: str) -> list[Step]:
        cp = ctx.dims.cp
        if cp == 1:
            return core
        out: list[Step] = []
        for i, block in enumerate(split_kernels(core, cp, tag)):
            if i < cp - 1 or tag == "bwd":  # backward returns the gradient accumulators home at the end
                out.append(
                    CommStep(f"cp_{tag}_shift{i}", CollectiveKind.SEND_RECV, CommKind.CP, Axis.CP, nbytes, 1)
                )
            out.extend(block)
        return out

    def kernel_view(self, ctx: BuildContext) -> tuple[float, bool]:
        """One kernel per K/V block of the load-balanced (zig-zag) split: 2·cp chunks of s/(2·cp), each step a
        chunk pair, mostly unmasked."""
        cp = ctx.dims.cp
        if cp == 1:
            return super().kernel_view(ctx)
        return ctx.training.seq_len / (2 * cp), False

    def attention_forward(self, ctx: BuildContext, core: list[Step], kv_bytes: float) -> list[Step]:
        """cp blocks, each overlapped with the shift of the next K/V block."""
        return self._ring(ctx, core, kv_bytes, "fwd")

    def attention_backward(self, ctx: BuildContext, core: list[Step], kv_bytes: float) -> list[Step]:
        """cp blocks; K/V and dK/dV travel together."""
        return self._ring(ctx, core, 2 * kv_bytes, "bwd")
