"""The strategy extension point: what one kind of parallelism adds to the work of each rank.

Each parallel dimension has an abstract base here; each variant is one file registered by name in
``STRATEGIES`` (``tensor``, ``sequence``, ``context_ring``, ``context_all_gather``, ``expert``, ``ddp``,
``zero1`` … ``zero3``). The layer builder (``simulator.build.layer``) calls their hooks at fixed points of
the transformer layer; the program builder calls the step-level hooks (gradient reduction, optimizer).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cached_property
from typing import ClassVar

from simulator.frameworks.profile import FrameworkProfile
from simulator.hardware.compute import ComputeModel
from simulator.models.spec import ModelSpec
from simulator.parallel.plan import ParallelDims
from simulator.scenario import ParallelismConfig, TrainingConfig
from simulator.workload.ops import Axis
from simulator.workload.steps import Step


@dataclass(frozen=True, eq=False)
class BuildContext:
    """Everything the strategies need to know about one scenario, derived once."""

    model: ModelSpec
    compute: ComputeModel
    training: TrainingConfig
    par: ParallelismConfig
    dims: ParallelDims
    framework: FrameworkProfile
    expert_load_factor: float = 1.0  # tokens on the most loaded expert-parallel rank ÷ the mean
    cuda_graphs: frozenset[str] = frozenset()  # the framework's CUDA-graph scopes (framework.cuda_graph_scope)
    ep_domains: int = 1  # NVLink (scale-up) domains one expert-parallel group spans

    @property
    def e(self) -> int:
        """Bytes per activation element."""
        return self.compute.element_bytes

    @cached_property
    def tokens(self) -> int:
        """Tokens of one micro-batch held by one rank of a context-parallel group (b·s/cp)."""
        return self.training.micro_batch * self.training.seq_len // self.dims.cp

    @property
    def tp(self) -> int:
        """Tensor-parallel degree."""
        return self.dims.tp

    @property
    def moe_tokens(self) -> int:
        """Tokens one rank's mixture-of-experts block routes: the micro-batch's when the experts are split
        over the tensor-parallel ranks (etp = tp: the sequence-parallel shards are gathered first), the
        sequence-parallel shard when they are folded whole onto each rank (etp = 1)."""
        return self.tokens * self.dims.expert_tp // self.dims.tp


class Strategy(ABC):  # noqa: B024 - a marker base: variants implement their dimension's hooks
    """One registered parallelism variant."""

    name: ClassVar[str]
    dimension: ClassVar[str]

    def validate(self, ctx: BuildContext) -> None:  # noqa: B027 - optional hook
        """Raise ``InfeasibleConfig`` when this strategy cannot run the scenario."""


class TensorStrategy(Strategy):
    """Megatron tensor parallelism: column-parallel input GEMMs, row-parallel output GEMMs."""

    dimension = "tensor"

    @abstractmethod
    def norm_tokens(self, ctx: BuildContext) -> int:
        """Tokens that norms, dropout and residual adds run on (all, or 1/tp with sequence parallelism)."""

    @abstractmethod
    def block_input_forward(self, ctx: BuildContext, tag: str) -> list[Step]:
        """Communication before a column-parallel GEMM in the forward pass (Megatron's f / g-bar)."""

    def output_overlapped(self, ctx: BuildContext) -> bool:
        """Whether the row-parallel output communication runs under the GEMM producing it."""
        return False

    @abstractmethod
    def block_output_forward(self, ctx: BuildContext, tag: str) -> list[Step]:
        """Communication after a row-parallel GEMM in the forward pass (Megatron's g)."""

    @abstractmethod
    def block_output_backward(self, ctx: BuildContext, tag: str) -> list[Step]:
        """Communication of the incoming gradient before the row-parallel GEMM's backward."""

    @abstractmethod
    def block_input_backward_pre(self, ctx: BuildContext, tag: str) -> list[Step]:
        """Communication issued before the column-parallel GEMM's input-gradient GEMM."""

    @abstractmethod
    def block_input_backward_post(self, ctx: BuildContext, tag: str) -> list[Step]:
        """Communication of the input gradient, overlapped with the weight-gradient GEMM."""


class ContextStrategy(Strategy):
    """Context parallelism: how attention sees keys and values of the other sequence shards."""

    dimension = "context"

    @abstractmethod
    def attention_forward(self, ctx: BuildContext, core: list[Step], kv_bytes: float) -> list[Step]:
        """The attention core of the forward pass, with the communication of K/V around the CP group."""

    @abstractmethod
    def attention_backward(self, ctx: BuildContext, core: list[Step], kv_bytes: float) -> list[Step]:
        """The attention core of the backward pass, with K/V and their gradients communicated."""

    def kernel_view(self, ctx: BuildContext) -> tuple[float, bool]:
        """(keys per query tile, causal) of the fused attention kernels this strategy launches: one causal
        kernel over the whole sequence unless the strategy splits it."""
        return float(ctx.training.seq_len), True

    def gathered_kv_bytes(self, ctx: BuildContext, kv_width: int) -> float:
        """Bytes of other ranks' keys and values one layer holds while it attends (``kv_width`` per token)."""
        return 0.0


class DataStrategy(Strategy):
    """Data parallelism and ZeRO: gradient reduction and parameter gathering."""

    dimension = "data"
    zero_stage: ClassVar[int]

    @abstractmethod
    def gradient_steps(self, ctx: BuildContext, grad_count: float, group: Axis, final: bool) -> list[Step]:
        """Reduction of ``grad_count`` gradients that just became ready (``final``: the last bucket)."""

    def layer_prologue(self, ctx: BuildContext, param_count: float, group: Axis, backward: bool) -> list[Step]:
        """Communication before a layer's forward or backward (ZeRO-3 parameter all-gather)."""
        return []

    def step_prologue(self, ctx: BuildContext, param_count: float, group: Axis) -> list[Step]:
        """Communication issued at the start of the step for a layer's parameters and waited for before
        the layer's first forward (the distributed optimizer's overlapped parameter all-gather)."""
        return []

    def layer_epilogue(self, ctx: BuildContext, param_count: float, group: Axis) -> list[Step]:
        """Communication after a layer's backward in every micro-batch (ZeRO-3 gradient reduce-scatter)."""
        return []

    @abstractmethod
    def after_optimizer(self, ctx: BuildContext, param_count: float, group: Axis) -> list[Step]:
        """Communication after the optimizer step (sharded optimizers all-gather the updated parameters)."""

    @abstractmethod
    def state_bytes(self, ctx: BuildContext, local_params: float, shard: int) -> tuple[float, float, float]:
        """(weights, gradients, optimizer) bytes a rank keeps of ``local_params`` parameters whose reducing
        group has ``shard`` ranks."""

    @abstractmethod
    def gathered_state_bytes(self, ctx: BuildContext, largest_unit: float) -> tuple[float, float]:
        """(weights, gradients) bytes of parameters gathered for use beside the rank's own."""

    @abstractmethod
    def bucket_bytes(self, ctx: BuildContext) -> float:
        """Communication buffers the strategy keeps (gradient buckets)."""

    @abstractmethod
    def optimizer_shard(self, ctx: BuildContext, group_size: int) -> int:
        """Into how many shards the optimizer state (and its update work) is split."""


class ExpertStrategy(Strategy):
    """Expert parallelism: how routed tokens reach the experts of other ranks and come back."""

    dimension = "expert"
    # Whether tokens arrive once per destination rank and are expanded into per-expert copies there (a local
    # permute, no per-expert chunk sort), as DeepEP/HybridEP dispatch them; else each copy travels on its own
    # and the received chunks are sorted by local expert (Megatron-Core's all-to-all dispatcher).
    local_permute: ClassVar[bool] = False

    def wire_copies(self, ctx: BuildContext, routed_tokens: float) -> float:
        """The messages ``routed_tokens`` expert copies travel as: one each, unless the dispatcher sends a token
        once per destination rank."""
        return routed_tokens

    @abstractmethod
    def dispatch(self, ctx: BuildContext, routed_tokens: float, backward: bool) -> list[Step]:
        """Communication sending ``routed_tokens`` token copies to their experts (or, in the backward pass,
        their gradients back)."""

    @abstractmethod
    def combine(self, ctx: BuildContext, routed_tokens: float, backward: bool) -> list[Step]:
        """Communication returning the experts' outputs (or, in the backward pass, the gradients of the
        outputs to the experts)."""
