"""One scenario in, one simulated training step out: the data flow of docs/design.md end to end.

scenario → cluster (topology) + parallel plan + strategies → programs of the simulated ranks →
engine on the network model → trace → metrics and report.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import simpy

import simulator
from simulator.engine.budget import check_ops, check_work, step_estimate
from simulator.engine.groups import GroupResolver, RankClasses
from simulator.engine.simulation import Engine
from simulator.engine.symmetry import refine as refine_classes
from simulator.engine.trace import Trace
from simulator.errors import InfeasibleConfig
from simulator.frameworks.profile import FrameworkProfile, profile_for
from simulator.hardware.calibration import ComputeCalibration, compute_calibration, link_calibration
from simulator.hardware.compute import ComputeModel
from simulator.memory.model import MemoryBreakdown, RankParams, memory_per_gpu
from simulator.models.flops import model_flops_per_token
from simulator.models.params import parameter_count
from simulator.network.models.base import (
    NETWORK_MODELS,
    CollectiveRequest,
    NetworkModel,
    PhaseCache,
    alone_time,
)
from simulator.parallel.plan import ParallelDims, ParallelPlan
from simulator.parallel.schedules.base import SCHEDULES
from simulator.parallel.strategies.base import STRATEGIES, BuildContext, DataStrategy, ExpertStrategy
from simulator.parallel.strategies.expert import expert_load_factor
from simulator.report.invariants import check_invariants
from simulator.report.links import bottleneck_tier, busiest_links, tier_usage
from simulator.report.metrics import StepMetrics, step_metrics
from simulator.report.schema import Breakdown, CommTimes, Layout, LinkUse, MemoryGiB, StepReport, TierUse
from simulator.report.warnings import tp_domain_warning
from simulator.scenario import Scenario
from simulator.topology.cluster import Cluster
from simulator.topology.loader import build_cluster
from simulator.units import GiB
from simulator.workload.builder import ProgramFactory, WorkloadSpec
from simulator.workload.layer import LayerStrategies
from simulator.workload.ops import Collective, CollectiveKind, Compute, SendRecv
from simulator.workload.program import Program
from simulator.workload.steps import CommStep, InlineTime

DATA_STRATEGY = {0: "ddp", 1: "zero1", 2: "zero2", 3: "zero3"}


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """The report of one step and the timeline it was computed from."""

    report: StepReport
    trace: Trace


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
    dims = ParallelDims(tp=p.tp, pp=p.pp, dp=dp, cp=p.cp, ep=p.ep)
    _check_expert_dims(scenario, dims)
    return dims


def _check_expert_dims(scenario: Scenario, dims: ParallelDims) -> None:
    moe = scenario.model.moe
    if dims.ep == 1:
        return
    if moe is None:
        raise InfeasibleConfig(f"ep={dims.ep} needs a mixture-of-experts model", field="parallelism.ep")
    if (dims.dp * dims.cp) % dims.ep:
        raise InfeasibleConfig(
            f"ep={dims.ep} does not divide dp·cp={dims.dp * dims.cp}", field="parallelism.ep"
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
        self, scenario: Scenario, cluster: Cluster, mode: str, calibration: ComputeCalibration | None = None
    ) -> None:
        self.scenario = scenario
        self.cluster = cluster
        self.mode = mode
        self.calibration = calibration  # overrides the GPU's shipped profile (used by the fitting script)
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
        impl = self.framework.attention_impl
        return ComputeModel(self.gpu, calib, self.scenario.training.precision, impl)

    @cached_property
    def framework(self) -> FrameworkProfile:
        """What the framework that runs the step launches and fuses (``frameworks/profiles/``)."""
        f = self.scenario.config.framework
        return profile_for(f.name, f.compile)

    @cached_property
    def ctx(self) -> BuildContext:
        """The strategies' view of the scenario."""
        s = self.scenario
        self.gpu.peak(s.training.precision)  # fail early on an unsupported precision
        load = expert_load_factor(s.model, s.training.expert_load, self.dims.ep)
        return BuildContext(s.model, self.compute, s.training, s.parallelism, self.dims, self.framework, load)

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
        expert = STRATEGIES.get("expert")()
        assert isinstance(expert, ExpertStrategy)
        schedule = SCHEDULES.get(p.schedule, field="parallelism.schedule")()
        chunks = p.virtual_stages
        if chunks > 1 and p.schedule != "interleaved":
            raise InfeasibleConfig(
                f"virtual_stages={chunks} needs schedule: interleaved (got {p.schedule})",
                field="parallelism.virtual_stages",
            )
        for strat in (tensor, context, expert, self.data):
            strat.validate(self.ctx)
        schedule.validate(self.dims.pp, self.micro_batches, chunks)
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
        tp = host[self.plan.groups("tp")]
        if np.any(tp != tp[:, :1]):
            return False
        for kind, size in (
            ("dp", self.dims.dp),
            ("cp", self.dims.cp),
            ("pp", self.dims.pp),
            ("ep", self.dims.ep),
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
        cache, groups = self.phase_cache, self.plan.groups("tp")[:1]
        memo: dict[tuple[object, ...], float] = {}

        def inline(step: CommStep) -> float | None:
            if step.group != "tp" or step.kind is CollectiveKind.SEND_RECV:
                return None
            key = (step.kind, step.bytes)
            if key not in memo:
                memo[key] = alone_time(
                    cache.routed(CollectiveRequest(step.kind, groups, step.bytes, ("tp-inline",)))
                )
            return memo[key]

        return inline

    @cached_property
    def classes(self) -> RankClasses:
        """Rank classes: one per pipeline stage under symmetry, one per rank in full mode."""
        world = self.dims.world
        pp = self.plan.coords["pp"]
        if self.mode == "full":
            labels = {r: f"rank {r} · pp{pp[r]}" for r in range(world)}
            return RankClasses(np.arange(world, dtype=np.int64), labels)
        gpu_type = np.array([spec.name for spec in self.cluster.gpu_specs[:world]])
        if len(set(gpu_type)) > 1:
            raise InfeasibleConfig("clusters with mixed GPU types are not simulated yet", field="cluster")
        ref = refine_classes(self.plan, self.cluster, self.phase_cache)
        if ref.unchecked_kinds:
            self.warnings.append(
                "symmetry reduction: the network equivalence of the "
                f"{', '.join(ref.unchecked_kinds)} was assumed, not checked (too many ranks to simulate in full); "
                "--full simulates every rank"
            )
        # the lowest rank of each class: its representative
        first = np.unique(ref.class_of, return_index=True)[1]
        per_stage = Counter(int(pp[r]) for r in first)
        labels = {
            c: f"pp{pp[r]}" if per_stage[int(pp[r])] == 1 else f"pp{pp[r]} · ranks like {int(r)}"
            for c, r in enumerate(first)
        }
        return RankClasses(ref.class_of, labels)


def _network(setup: Setup, env: simpy.Environment) -> NetworkModel:
    cls = NETWORK_MODELS.get(setup.scenario.config.network.model, field="network.model")
    return cls(env, setup.phase_cache)


def _account_inline(programs: dict[int, Program], resolver: GroupResolver, network: NetworkModel) -> None:
    """Add the link traffic of the collectives folded into compute ops (each stands for all instances of
    its representative's group, as a collective run by the engine would)."""
    counts: Counter[tuple[int, CommStep]] = Counter()
    for rank, prog in programs.items():
        for op in prog.ops:
            if isinstance(op, Compute):
                for seg in op.segments:
                    step = getattr(seg, "step", None)
                    if step is not None:
                        counts[(rank, step)] += 1
    # every member of a group reaches the same collective: account each group instance once (in ``--full``
    # mode all tp members of a group are simulated and would otherwise count its bytes tp times)
    per_group: dict[tuple[object, ...], tuple[CollectiveRequest, int]] = {}
    for (rank, step), n in counts.items():
        op = Collective(step.name, step.kind, step.comm, step.group, step.bytes)
        gkey, _, req = resolver.collective(rank, op)
        per_group[(gkey, step)] = (req, n)
    for req, n in per_group.values():
        for phase in network.cache.routed(req):
            np.add.at(network.link_bytes, phase.link_ids, phase.link_bytes * n)


def _p2p_bytes(programs: dict[int, Program], classes: RankClasses) -> tuple[float, float]:
    """Bytes sent and received point to point by every rank (each representative counted for its class)."""
    sent = received = 0.0
    for c, rep in enumerate(classes.representatives):
        n = float(classes.multiplicity[c])
        for op in programs[int(rep)].ops:
            if isinstance(op, SendRecv):
                if op.is_send:
                    sent += n * op.bytes
                else:
                    received += n * op.bytes
    return sent, received


def peak_memory(setup: Setup) -> MemoryBreakdown:
    """The most loaded pipeline stage's memory."""
    w, ctx = setup.workload, setup.ctx
    shards = {g: int(setup.plan.groups(g).shape[1]) for g in (w.dense_group, w.expert_group)}
    best: MemoryBreakdown | None = None
    for stage in range(setup.dims.pp):
        vss = [c * setup.dims.pp + stage for c in range(w.chunks)]
        dense, expert = (sum(x) for x in zip(*(w.chunk_param_split(v) for v in vss), strict=True))
        layers = [ctx.model.is_moe_layer(i) for v in vss for i in w.virtual_layers[v]]
        largest = max(w.largest_unit_params(v) for v in vss)
        rank = RankParams(dense, shards[w.dense_group], expert, shards[w.expert_group], largest)
        in_flight = w.schedule.in_flight(stage, setup.dims.pp, w.micro_batches, w.chunks)
        mem = memory_per_gpu(ctx, rank, layers, in_flight, w.last_virtual in vss, 0 in vss)
        if best is None or mem.total > best.total:
            best = mem
    assert best is not None
    return best


def _links(setup: Setup, network: NetworkModel, step_s: float) -> tuple[list[LinkUse], list[TierUse], str]:
    """The report's link fields: the busiest links, the load per fabric tier and the bottleneck tier."""
    tiers = tier_usage(setup.cluster, network.link_bytes, step_s)
    return busiest_links(setup.cluster, network.link_bytes, step_s), tiers, bottleneck_tier(tiers)


def _report(
    setup: Setup, trace: Trace, m: StepMetrics, network: NetworkModel, events: int, wall: float
) -> StepReport:
    s, gpus = setup.scenario, setup.cluster.num_gpus
    step = m.step_time_s
    tokens = s.training.global_batch * s.training.seq_len
    peak = setup.gpu.peak(s.training.precision)
    model_flops = model_flops_per_token(s.model, s.training.seq_len) * tokens
    mult = np.array([trace.rank_multiplicity[r] for r in trace.rank.tolist()]) if len(trace) else np.zeros(0)
    hw_flops = float((trace.hw_flops * mult).sum())
    mem = peak_memory(setup)
    gib = {k: getattr(mem, k) / GiB for k in ("weights", "grads", "optimizer", "activations", "other")}
    fits = mem.total <= setup.gpu.hbm_bytes
    warnings = list(setup.warnings)
    if not fits:
        name, size = mem.largest()
        warnings.append(
            f"does not fit: {mem.total / GiB:.1f} GiB per GPU > {setup.gpu.hbm_bytes / GiB:.1f} GiB HBM; "
            f"largest term: {name} {size / GiB:.1f} GiB"
        )
    tp_warning = tp_domain_warning(setup.cluster, setup.plan)
    if tp_warning is not None:
        warnings.append(tp_warning)
    links, tiers, bottleneck = _links(setup, network, step)
    p = s.parallelism
    layout = Layout(
        tp=p.tp, pp=p.pp, dp=setup.dims.dp, cp=p.cp, ep=p.ep, zero=p.zero, sequence_parallel=p.sequence_parallel,
        schedule=p.schedule, virtual_stages=p.virtual_stages, micro_batch=s.training.micro_batch,
        micro_batches=setup.micro_batches, global_batch=s.training.global_batch, seq_len=s.training.seq_len,
        precision=s.training.precision, recompute=s.training.recompute,
    )  # fmt: skip
    return StepReport(
        scenario=s.name,
        gpus=gpus,
        step_time_s=step,
        tokens_per_s=tokens / step,
        samples_per_s=s.training.global_batch / step,
        model_tflops_per_gpu=model_flops / step / gpus / 1e12,
        mfu=model_flops / (step * gpus * peak),
        hfu=hw_flops / (step * gpus * peak),
        breakdown=Breakdown(
            compute_s=m.compute_s,
            exposed_comm_s=m.exposed_comm_s,
            overlapped_comm_s=m.overlapped_comm_s,
            bubble_s=m.bubble_s,
            other_s=m.other_s,
        ),  # fmt: skip
        comm=CommTimes(**{f"{k}_s": v for k, v in m.comm_s.items()}),
        exposed_comm=CommTimes(**{f"{k}_s": v for k, v in m.exposed_by_kind_s.items()}),
        memory_gib_per_gpu=MemoryGiB(**gib, total=mem.total / GiB),
        fits_memory=fits,
        simulated_ranks=len(trace.rank_labels),
        events=events,
        wall_s=wall,
        model=s.model.name,
        gpu=setup.gpu.name,
        cluster=setup.cluster.name,
        layout=layout,
        links=links,
        tiers=tiers,
        bottleneck_tier=bottleneck,
        warnings=warnings,
        version=simulator.__version__,
    )


def simulate(
    scenario: Scenario, *, mode: str | None = None, calibration: ComputeCalibration | None = None
) -> SimulationResult:
    """Simulate one optimizer step of ``scenario`` (``mode``: ``symmetric`` or ``full``, default from the
    scenario's ``engine.mode``; ``calibration`` replaces the GPU's shipped compute profile)."""
    t0 = time.perf_counter()
    cluster = build_cluster(scenario.topology, file=scenario.topology_file)
    setup = Setup(scenario, cluster, mode or scenario.config.engine.mode, calibration)
    factory = ProgramFactory(setup.workload, setup.inline_comm)
    classes = setup.classes
    work = step_estimate(scenario, cluster, len(classes.representatives), setup.micro_batches, setup.dims.pp)
    check_work(work)  # refuse before building programs past the engine's limit (engine/budget.py)
    env = simpy.Environment()
    run = run_step(setup, factory, env, _network(setup, env))
    report = _report(setup, run.trace, run.metrics, run.network, run.events, time.perf_counter() - t0)
    flow = scenario.config.network.model == "flow"
    where = f"{scenario.file} (scenario {scenario.name})"
    report = check_invariants(
        report, run.trace, scenario=where, contention=flow, p2p_bytes=_p2p_bytes(run.programs, classes)
    )
    return SimulationResult(report, run.trace)


@dataclass(frozen=True, eq=False)
class StepRun:
    """One simulated step before it becomes a report."""

    programs: dict[int, Program]
    network: NetworkModel
    trace: Trace
    metrics: StepMetrics
    events: int


def run_step(setup: Setup, factory: ProgramFactory, env: simpy.Environment, network: NetworkModel) -> StepRun:
    """Build the representatives' programs, run them on the engine over ``network``, and measure the step
    (shared by ``simulate`` and the search fast path, so that both time a layout the same way)."""
    classes = setup.classes
    programs = {int(r): factory.build(int(r)) for r in classes.representatives}
    check_ops(programs.values())
    resolver = GroupResolver(setup.plan, classes)
    engine = Engine(env, programs, resolver, network)
    engine.run()
    _account_inline(programs, resolver, network)
    labels = {int(r): classes.labels[c] for c, r in enumerate(classes.representatives)}
    mult = {int(r): int(classes.multiplicity[c]) for c, r in enumerate(classes.representatives)}
    trace = engine.finish_trace(labels, mult)
    metrics = step_metrics(trace, pipelined=setup.dims.pp > 1)
    return StepRun(programs, network, trace, metrics, engine.events)
