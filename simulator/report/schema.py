"""The JSON report of one simulated step (the contract of docs/design.md, "JSON report").

``clustersim run S.yaml --json`` prints exactly one ``StepReport`` object. Fields beyond the contract
(``comm_bytes``, ``links``, ``tiers``, ``warnings``, ``layout`` ...) are additions; the contract's fields never change
meaning. Times are seconds of one optimizer step; memory is GiB (2**30 bytes) per GPU.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Breakdown(_Frozen):
    """Where the critical rank's step time goes: compute_s + exposed_comm_s + bubble_s + other_s = step_time_s.

    ``overlapped_comm_s`` is communication hidden under compute, outside that sum.
    """

    compute_s: float
    exposed_comm_s: float
    overlapped_comm_s: float
    bubble_s: float
    other_s: float


class KernelClasses(_Frozen):
    """The critical rank's time per kind of work (issue #8), seconds: gemm_s + attention_s + elementwise_s +
    fp8_cast_s + host_bound_s = breakdown.compute_s (recomputed kernels in their class); optimizer_s is the
    optimizer update, which the breakdown counts in other_s; communication_s = breakdown.exposed_comm_s.

    ``host_bound_s`` is the GPU waiting for the host to launch kernels (a launch-bound run of short kernels);
    ``fp8_cast_s`` the quantisation of FP8 GEMMs' inputs, zero in 16-bit training. The compute model sets each
    kernel's class where it times it (``hardware/compute.py`` ``KernelClass``)."""

    gemm_s: float = 0.0
    attention_s: float = 0.0
    elementwise_s: float = 0.0
    fp8_cast_s: float = 0.0
    host_bound_s: float = 0.0
    optimizer_s: float = 0.0
    communication_s: float = 0.0

    def compute_s(self) -> float:
        """The classes that make up ``breakdown.compute_s``."""
        return self.gemm_s + self.attention_s + self.elementwise_s + self.fp8_cast_s + self.host_bound_s


class CommTimes(_Frozen):
    """Time the critical rank spends in each kind of communication (exposed or hidden), seconds."""

    tp_s: float = 0.0
    dp_s: float = 0.0
    pp_s: float = 0.0
    ep_s: float = 0.0
    cp_s: float = 0.0


class MemoryGiB(_Frozen):
    """Peak memory per GPU of the most loaded rank, GiB."""

    weights: float
    grads: float
    optimizer: float
    activations: float
    other: float
    total: float


class LinkUse(_Frozen):
    """One directed link's load over the step."""

    link: str
    link_type: str
    bytes: float
    utilization: float  # busy bytes / (capacity × step time)


class TierUse(_Frozen):
    """One tier of the fabric (``nvlink``, ``pcie``, ``nic-leaf``, ``leaf-spine``, ``spine-core`` ...) over
    the step: how many directed links it has, the bytes they moved, its aggregate utilisation (tier bytes
    over tier capacity × step time), its busiest link's utilisation, and its busiest links."""

    tier: str
    links: int  # directed links of this tier in the cluster
    used_links: int  # those that carried any bytes
    bytes: float
    utilization: float  # tier bytes / (sum of its link capacities × step time)
    max_utilization: float  # of its busiest link
    busiest: list[LinkUse] = Field(default_factory=list)  # most loaded first


class Layout(_Frozen):
    """The parallel layout that was simulated (after defaults were derived)."""

    tp: int
    pp: int
    dp: int
    cp: int
    ep: int
    etp: int  # the experts' tensor-parallel degree (tp unless the scenario sets parallelism.etp)
    moe_dispatcher: str | None = None  # parallelism.moe_dispatcher as given (None: Megatron-Core's all-to-all)
    zero: int
    sequence_parallel: bool
    schedule: str
    virtual_stages: int
    micro_batch: int
    micro_batches: int  # per pipeline per step (gradient-accumulation steps)
    global_batch: int
    seq_len: int
    precision: str
    recompute: str


class StepReport(_Frozen):
    """Everything one ``clustersim run`` reports about a training step."""

    scenario: str
    gpus: int
    step_time_s: float
    tokens_per_s: float
    samples_per_s: float
    model_tflops_per_gpu: float
    mfu: float
    hfu: float
    breakdown: Breakdown
    comm: CommTimes
    memory_gib_per_gpu: MemoryGiB
    fits_memory: bool
    simulated_ranks: int
    events: int
    wall_s: float
    # ---- additions beyond the docs/design.md contract ----
    model: str = ""
    gpu: str = ""
    cluster: str = ""
    layout: Layout | None = None
    exposed_comm: CommTimes = Field(default_factory=CommTimes)  # the exposed part, per kind
    kernel_classes: KernelClasses = Field(default_factory=KernelClasses)  # the step per kind of work
    links: list[LinkUse] = Field(default_factory=list)  # busiest links, most loaded first
    tiers: list[TierUse] = Field(default_factory=list)  # per fabric tier, inner (NVLink) to outer (core)
    bottleneck_tier: str = ""  # the tier whose busiest link is the most utilised ("" without link data)
    # what the step costs (simulator/report/cost.py; issue #10): at the scenario's cost.usd_per_gpu_hour, and
    # for a run of its cost.train_tokens (days and usd of an uninterrupted run; None when the scenario does
    # not say how many tokens it trains, and every cost field None in reports written before they existed)
    usd_per_gpu_hour: float | None = None
    usd_per_million_tokens: float | None = None
    train_tokens: float | None = None
    days: float | None = None
    usd: float | None = None
    warnings: list[str] = Field(default_factory=list)
    version: str = ""
