"""A scenario's setup and feasibility: parallel degrees, micro-batches, strategies, the compute model and
the program builder's inputs, each derived once and validated (errors name the field), and the memory of the
most loaded pipeline stage."""

from __future__ import annotations

from dataclasses import replace
from functools import cached_property

import numpy as np

from simulator.build.layer import LayerStrategies
from simulator.build.memory import MemoryBreakdown, RankParams, memory_per_gpu
from simulator.build.program_builder import WorkloadSpec
from simulator.errors import InfeasibleConfig
from simulator.frameworks.profile import FrameworkProfile, profile_for
from simulator.hardware.attention import attention_impls
from simulator.hardware.calibration import ComputeCalibration, compute_calibration, link_calibration
from simulator.hardware.compute import ComputeModel
from simulator.models.params import parameter_count
from simulator.network.models.base import (
    CollectiveRequest,
    PhaseCache,
    alone_time,
)
from simulator.parallel.plan import ParallelDims, ParallelPlan
from simulator.parallel.strategies.base import BuildContext, DataStrategy, ExpertStrategy
from simulator.parallel.strategies.expert import expert_load_factor
from simulator.parallel.strategies.expert_flex import FLEX_DISPATCHERS
from simulator.registry import SCHEDULES, STRATEGIES
from simulator.scenario import Scenario
from simulator.topology.cluster import Cluster
from simulator.workload.ops import Axis, CollectiveKind
from simulator.workload.steps import CommStep, InlineTime

DATA_STRATEGY = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}

def _derive_dims(scenario: Scenario, gpus: int) -> ParallelDims:
    """Parallel degrees with ``dp`` derived, checked against the GPU count."""
    p = scenario.parallelism
    model_par = p.tp * p.pp * p.cp
    if p.dp is None:
        if gpus % model_par:
            raise InfeasibleConfig(
                f"gpus={gpus} is not divisible by tp·pp·cp={p.tp}·{p.pp}·{p.cp}={model_par}",
                field="parallelism",
            )
        dp = gpus // model_par
    else:
        dp = p.dp
        if dp * model_par != gpus:
            raise InfeasibleConfig(
                f"tp·pp·cp·dp={p.tp}·{p.pp}·{p.cp}·{dp}={dp * model_par} does not match the cluster's {gpus} GPUs",
                field="parallelism.dp",
            )
    dims = ParallelDims(tp=p.tp, pp=p.pp, dp=dp, cp=p.cp, ep=p.ep, etp=p.etp)
    _check_expert_dims(scenario, dims)
    return dims


def _check_expert_dims(scenario: Scenario, dims: ParallelDims) -> None:
    moe = scenario.model.moe
    if moe is None:
        if dims.ep > 1:
            raise InfeasibleConfig(f"ep={dims.ep} needs a mixture-of-experts model", field="parallelism.ep")
        return
    etp, stage = dims.expert_tp, dims.tp * dims.cp * dims.dp
    if etp not in (1, dims.tp):
        raise InfeasibleConfig(
            f"etp={etp} is not modelled; valid: 1 (experts whole on each rank, MoE parallel folding) or tp={dims.tp}",
            field="parallelism.etp",
        )
    if stage % (etp * dims.ep):
        # MoE parallel folding: expert groups are carved out of a stage's tp·cp·dp ranks (plan.py)
        raise InfeasibleConfig(
            f"ep·etp={dims.ep}·{etp} does not divide a pipeline stage's tp·cp·dp={stage} ranks",
            field="parallelism.ep",
        )
    if etp < dims.tp and not scenario.parallelism.sequence_parallel:
        # Megatron-Core requires it (TransformerConfig: expert and tensor parallelism need sequence
        # parallelism); the folded experts then take the sequence-parallel shard of the tokens
        raise InfeasibleConfig(
            f"etp={etp} < tp={dims.tp} needs sequence_parallel: true", field="parallelism.sequence_parallel"
        )
    if moe.experts % dims.ep:
        raise InfeasibleConfig(f"ep={dims.ep} does not divide experts={moe.experts}", field="parallelism.ep")


def _micro_batches(scenario: Scenario, dims: ParallelDims) -> int:
    t = scenario.training
    per_step = dims.dp * t.micro_batch
    if t.global_batch % per_step:
        raise InfeasibleConfig(
            f"global_batch={t.global_batch} is not divisible by dp·micro_batch={dims.dp}·{t.micro_batch}={per_step}",
            field="training.global_batch",
        )
    return t.global_batch // per_step


class Setup:
    """Everything derived from a scenario before simulation (no I/O in the constructor)."""

    def __init__(
        self,
        scenario: Scenario,
        cluster: Cluster,
        mode: str,
        calibration: ComputeCalibration | None = None,
        host_launch_s: float | None = None,
    ) -> None:
        self.scenario = scenario
        self.cluster = cluster
        self.mode = mode
        self.calibration = calibration  # overrides the GPU's shipped profile (used by the fitting script)
        self.host_launch_s = host_launch_s  # overrides the framework's launch cost (used by the fitting script)
        self.warnings: list[str] = []

    @cached_property
    def dims(self) -> ParallelDims:
        """Parallel degrees."""
        return _derive_dims(self.scenario, self.cluster.num_gpus)

    @cached_property
    def plan(self) -> ParallelPlan:
        """Rank coordinates and groups."""
        return ParallelPlan(self.dims)

    @cached_property
    def micro_batches(self) -> int:
        """Micro-batches per pipeline per step."""
        return _micro_batches(self.scenario, self.dims)

    @cached_property
    def gpu(self):  # type: ignore[no-untyped-def]
        """The GPU spec (the first GPU's type; mixed clusters are checked in ``classes``)."""
        return self.cluster.gpu_specs[0]

    @cached_property
    def compute(self) -> ComputeModel:
        """Compute model of the cluster's GPU type at the training precision."""
        calib = self.calibration or compute_calibration(self.gpu.name)
        if calib.inherited_from:
            self.warnings.append(
                f"{self.gpu.name} has no calibration of its own; uses {calib.inherited_from}'s"
            )
        elif calib.transferred_from:
            self.warnings.append(
                f"{self.gpu.name} has no end-to-end calibration of its own; its GEMM constants are "
                f"{calib.transferred_from}'s scaled by published kernel measurements (calibrate transfer)"
            )
        chosen = self.scenario.config.framework.attention_impl
        if chosen is not None and chosen not in attention_impls(self.gpu.name):
            raise InfeasibleConfig(
                f"attention_impl {chosen} has no kernel model on {self.gpu.name}; valid there: "
                + ", ".join(attention_impls(self.gpu.name)),
                field="framework.attention_impl",
            )
        impl = chosen or self.framework.attention_impl
        launch = self.framework.kernel_launch_s if self.host_launch_s is None else self.host_launch_s
        if "full_iteration" in self.scenario.config.framework.cuda_graph_scope:
            # the whole step replays as CUDA graphs: no host launch per kernel (layer.py _graphed for scopes)
            launch = 0.0
        t = self.scenario.training
        recipe = t.fp8_recipe or "delayed"  # not stated: Transformer Engine's default recipe (DelayedScaling)
        return ComputeModel(
            self.gpu, calib, t.precision, impl, recipe, self.framework.cast_kernels(recipe), launch
        )

    @cached_property
    def framework(self) -> FrameworkProfile:
        """What the framework that runs the step launches and fuses (``frameworks/profiles/``)."""
        f = self.scenario.config.framework
        profile = profile_for(f.name, f.compile)
        if f.gradient_accumulation_fusion is not None:
            profile = replace(profile, fused_grad_accumulation=f.gradient_accumulation_fusion)
        return profile

    @cached_property
    def ctx(self) -> BuildContext:
        """The strategies' view of the scenario."""
        s = self.scenario
        self.gpu.peak(s.training.precision)  # fail early on an unsupported precision
        load = expert_load_factor(s.model, s.training.expert_load, self.dims.ep)
        graphs = frozenset(s.config.framework.cuda_graph_scope)
        domains = 1
        if self.dims.ep > 1:  # rank r runs on GPU r (parallel/plan.py)
            domains = len(np.unique(self.cluster.nvlink_domain_of_gpu[self.plan.groups(Axis.EP)[0]]))
        return BuildContext(s.model, self.compute, s.training, s.parallelism, self.dims, self.framework, load, graphs,
                            domains)  # fmt: skip

    @cached_property
    def data(self) -> DataStrategy:
        """The data-parallel / ZeRO strategy."""
        cls = STRATEGIES.get(DATA_STRATEGY[self.scenario.parallelism.zero], field="parallelism.zero")
        inst = cls()
        assert isinstance(inst, DataStrategy)
        return inst

    @cached_property
    def workload(self) -> WorkloadSpec:
        """The program builder's inputs, validated."""
        p = self.scenario.parallelism
        tensor = STRATEGIES.get("sequence" if p.sequence_parallel else "tensor")()
        context = STRATEGIES.get(f"context_{p.cp_algorithm}", field="parallelism.cp_algorithm")()
        # DeepEP and HybridEP run through Megatron-Core's flex dispatcher (expert_flex.py); allgather runs as alltoall
        expert = STRATEGIES.get("expert_flex" if p.moe_dispatcher in FLEX_DISPATCHERS else "expert")()
        assert isinstance(expert, ExpertStrategy)
        schedule = SCHEDULES.get(p.schedule, field="parallelism.schedule")()
        chunks = p.virtual_stages
        for strat in (tensor, context, expert, self.data):
            strat.validate(self.ctx)
        schedule.check(self.dims.pp, self.micro_batches, chunks)
        spec = WorkloadSpec(
            self.ctx, self.plan, LayerStrategies(tensor, context, expert), self.data, schedule,  # type: ignore[arg-type]
            parameter_count(self.scenario.model), self.micro_batches, chunks,
        )  # fmt: skip
        _ = spec.virtual_layers  # raises on an impossible layer split
        return spec

    @cached_property
    def phase_cache(self) -> PhaseCache:
        """Routed collectives, shared by the network model and inlined collectives."""
        return PhaseCache(self.cluster, link_calibration(), self.scenario.config.network.algorithm)

    def _host_local_tp(self) -> bool:
        """TP groups each inside one host, and no other group with two members on one host: then TP
        traffic shares no link with other traffic (PXN detours stay on other rails' NVLinks only when
        crossing rails, which same-local-index groups never do)."""
        host = self.cluster.host_of_gpu
        tp = host[self.plan.groups(Axis.TP)]
        if np.any(tp != tp[:, :1]):
            return False
        for kind, size in (
            (Axis.DP, self.dims.dp),
            (Axis.CP, self.dims.cp),
            (Axis.PP, self.dims.pp),
            (Axis.EP, self.dims.ep),
        ):
            if size > 1:
                h = np.sort(host[self.plan.groups(kind)], axis=1)
                if np.any(h[:, 1:] == h[:, :-1]):
                    return False
        return True

    @cached_property
    def inline_comm(self) -> InlineTime | None:
        """Uncontended duration of host-local TP collectives, or None when they must run in the engine."""
        if not self.scenario.config.engine.fuse_local_comm or self.dims.tp == 1 or not self._host_local_tp():
            return None
        cache, groups = self.phase_cache, self.plan.groups(Axis.TP)[:1]
        memo: dict[tuple[object, ...], float] = {}

        def inline(step: CommStep) -> float | None:
            if step.group != Axis.TP or step.kind is CollectiveKind.SEND_RECV:
                return None
            key = (step.kind, step.bytes)
            if key not in memo:
                memo[key] = alone_time(
                    cache.routed(CollectiveRequest(step.kind, groups, step.bytes, ("tp-inline",)))
                )
            return memo[key]

        return inline


def peak_memory(setup: Setup) -> MemoryBreakdown:
    """The most loaded pipeline stage's memory."""
    w, ctx = setup.workload, setup.ctx
    shards = {g: int(setup.plan.groups(g).shape[1]) for g in (w.dense_group, w.expert_group)}
    best: MemoryBreakdown | None = None
    for stage in range(setup.dims.pp):
        vss = [w.schedule.virtual_stage(stage, c, setup.dims.pp) for c in range(w.chunks)]
        dense, expert = (sum(x) for x in zip(*(w.chunk_param_split(v) for v in vss), strict=True))
        layers = [ctx.model.is_moe_layer(i) for v in vss for i in w.virtual_layers[v]]
        largest = max(w.largest_unit_params(v) for v in vss)
        rank = RankParams(dense, shards[w.dense_group], expert, shards[w.expert_group], largest)
        in_flight = w.schedule.in_flight(stage, setup.dims.pp, w.micro_batches, w.chunks)
        if w.combined_1f1b:  # one more warm-up forward (parallel/schedules/base.py pair_steady_state)
            in_flight = min(in_flight + 1 / w.chunks, w.micro_batches)
        context = w.layer_strategies.context
        mem = memory_per_gpu(ctx, w.data, context, rank, layers, in_flight, w.last_virtual in vss, 0 in vss)
        if best is None or mem.total > best.total:
            best = mem
    assert best is not None
    return best
