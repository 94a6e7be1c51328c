"""Data parallelism with replicated optimizer state (PyTorch DDP; ZeRO stage 0).

Gradients are all-reduced in buckets as the backward pass of the last micro-batch produces them, overlapped
with the rest of the backward pass (Li et al. 2020, "PyTorch Distributed", VLDB; bucket_cap_mb = 25 by
default). Without overlap (Megatron-LM's ``--DDP-impl local`` of 2021) the reduction runs after the backward
pass. Every rank then updates all of its parameters.
"""

from __future__ import annotations

from typing import ClassVar

from simulator.parallel.strategies.base import BuildContext, DataStrategy
from simulator.registry import STRATEGIES
from simulator.workload.ops import Axis, CollectiveKind, CommKind
from simulator.workload.steps import CommStep, Step


def grad_element_bytes(ctx: BuildContext) -> int:
    """Bytes per gradient element on the wire: Megatron-LM reduces bf16 gradients in fp32
    (arguments.py forces accumulate_allreduce_grads_in_fp32 with --bf16); fp16 training reduces fp16.
    ZeRO-3 reduces in the working parameters' dtype, as PyTorch FSDP (MixedPrecision.reduce_dtype defaults
    to param_dtype) and DeepSpeed (communication_data_type defaults to the model's dtype) do."""
    if ctx.par.grad_reduce_dtype is not None:  # stated by the run (torchtitan reduces in fp32 by default)
        return {"fp32": 4, "bf16": 2, "fp16": 2}[ctx.par.grad_reduce_dtype]
    if ctx.par.zero == 3:
        return param_element_bytes(ctx)
    return 2 if ctx.training.precision == "fp16" else 4


def param_element_bytes(ctx: BuildContext) -> int:
    """Bytes per parameter element of the working (16-bit) model copy."""
    return 4 if ctx.training.precision == "fp32" else 2


@STRATEGIES.register("ddp")
class DataParallel(DataStrategy):
    """Gradient all-reduce, full optimizer on every rank."""

    name = "ddp"
    zero_stage: ClassVar[int] = 0
    reduce_kind: ClassVar[CollectiveKind] = CollectiveKind.ALL_REDUCE
    # which of (weights, gradients, optimizer state) the data-parallel group shards
    shards: ClassVar[tuple[bool, bool, bool]] = (False, False, False)

    def state_bytes(self, ctx: BuildContext, local_params: float, shard: int) -> tuple[float, float, float]:
        """(weights, gradients, optimizer) bytes of ``local_params`` parameters reduced over a group of ``shard``
        ranks: the 16-bit (or fp32) working weights, the main gradients, and Adam's fp32 master weights, m and v
        (12 bytes; 8 when the weights are fp32 already) or SGD's momentum; each divided by ``shard`` when this
        stage shards it (Rajbhandari et al. 2020, Fig. 1)."""
        w = local_params * param_element_bytes(ctx)
        g = local_params * grad_element_bytes(ctx)
        fp32 = ctx.training.precision == "fp32"
        if ctx.training.optimizer == "sgd":
            o = local_params * (0.0 if fp32 else 4.0)
        else:
            o = local_params * (8.0 if fp32 else 12.0)
        sw, sg, so = self.shards
        return (w / shard if sw else w, g / shard if sg else g, o / shard if so else o)

    def gathered_state_bytes(self, ctx: BuildContext, largest_unit: float) -> tuple[float, float]:
        """(weights, gradients) bytes of the gathered layers a rank holds beside its shard: none unless the
        stage gathers parameters per use."""
        return 0.0, 0.0

    def bucket_bytes(self, ctx: BuildContext) -> float:
        """Gradient buckets in flight: DDP keeps two of ``grad_bucket_mb`` (PyTorch DDP's reducer)."""
        return ctx.par.grad_bucket_mb * 1e6 * 2

    def gradient_steps(self, ctx: BuildContext, grad_count: float, group: Axis, final: bool) -> list[Step]:
        """One bucket's gradient reduction, waited for before the optimizer step."""
        nbytes = grad_count * grad_element_bytes(ctx)
        if nbytes <= 0:
            return []
        name = f"grad_{self.reduce_kind.value}"
        return [CommStep(name, self.reduce_kind, CommKind.DP, group, nbytes, join_after=-1)]

    def after_optimizer(self, ctx: BuildContext, param_count: float, group: Axis) -> list[Step]:
        """Replicated optimizer: parameters are already everywhere."""
        return []

    def optimizer_shard(self, ctx: BuildContext, group_size: int) -> int:
        """Each rank updates all of its parameters."""
        return 1
