"""One scenario in, one simulated training step out: the data flow of docs/design.md end to end.

scenario → cluster (topology) + parallel plan + strategies → programs of the simulated ranks →
engine on the network model → trace → metrics and report.
"""

from __future__ import annotations

import gc
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import simpy

import simulator
from simulator.build.program_builder import ProgramFactory
from simulator.build.setup import Setup, peak_memory
from simulator.engine.budget import check_ops, check_work, step_estimate
from simulator.engine.groups import GroupResolver, RankClasses
from simulator.engine.simulation import Engine
from simulator.engine.symmetry import pipeline_offsets
from simulator.engine.symmetry import refine as refine_classes
from simulator.engine.trace import Trace
from simulator.errors import InfeasibleConfig
from simulator.hardware.calibration import ComputeCalibration
from simulator.models.flops import model_flops_per_token
from simulator.network.clock import HeapEnvironment
from simulator.network.models.base import CollectiveRequest, NetworkModel
from simulator.registry import NETWORK_MODELS
from simulator.report.cost import run_cost
from simulator.report.invariants import check_invariants
from simulator.report.links import bottleneck_tier, busiest_links, tier_usage
from simulator.report.metrics import StepMetrics, step_metrics
from simulator.report.schema import (
    Breakdown,
    CommTimes,
    KernelClasses,
    Layout,
    LinkUse,
    MemoryGiB,
    StepReport,
    TierUse,
)
from simulator.report.warnings import tp_domain_warning, unmodelled_settings
from simulator.scenario import Scenario
from simulator.topology.loader import build_cluster
from simulator.units import GiB
from simulator.workload.ops import Collective, Compute, SendRecv
from simulator.workload.program import Program
from simulator.workload.steps import CommStep


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """The report of one step and the timeline it was computed from."""

    report: StepReport
    trace: Trace


def rank_classes(setup: Setup) -> RankClasses:
    """Rank classes: one per pipeline stage under symmetry, one per rank in full mode."""
    world = setup.dims.world
    pp = setup.plan.coords["pp"]
    if setup.mode == "full":
        labels = {r: f"rank {r} · pp{pp[r]}" for r in range(world)}
        return RankClasses(np.arange(world, dtype=np.int64), labels)
    gpu_type = np.array([spec.name for spec in setup.cluster.gpu_specs[:world]])
    if len(set(gpu_type)) > 1:
        raise InfeasibleConfig("clusters with mixed GPU types are not simulated yet", field="cluster")
    w = setup.workload
    offsets = pipeline_offsets(w.schedule, setup.dims.pp, w.chunks)
    ref = refine_classes(setup.plan, setup.cluster, setup.phase_cache, offsets)
    if ref.unchecked_kinds:
        setup.warnings.append(
            "symmetry reduction: the network equivalence of the "
            f"{', '.join(ref.unchecked_kinds)} was assumed, not checked (checking it would simulate too many ranks); "
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
    per_program: dict[int, Counter[CommStep]] = {}  # id(program) → its inlined steps (ranks share programs)
    ops: dict[CommStep, Collective] = {}
    # every member of a group reaches the same collective: account each group instance once (in ``--full``
    # mode all tp members of a group are simulated and would otherwise count its bytes tp times)
    per_group: dict[tuple[object, ...], tuple[CollectiveRequest, int]] = {}
    for rank, prog in programs.items():
        counts = per_program.get(id(prog))
        if counts is None:
            counts = per_program[id(prog)] = _inlined_steps(prog)
        for step, n in counts.items():
            op = ops.get(step)
            if op is None:
                op = ops[step] = Collective(step.name, step.kind, step.comm, step.group, step.bytes)
            gkey, _, req = resolver.collective(rank, op)
            per_group[(gkey, step)] = (req, n)
    for req, n in per_group.values():
        for phase in network.cache.routed(req):
            np.add.at(network.link_bytes, phase.link_ids, phase.link_bytes * n)


def _inlined_steps(prog: Program) -> Counter[CommStep]:
    """How often each collective folded into ``prog``'s compute ops runs, in order of first occurrence.
    The ops of one compiled step share its ``segments`` tuple (a 1T-parameter pipeline emits each for hundreds
    of micro-batches): counted by identity first, then each distinct layout's steps once."""
    segments = [op.segments for op in prog.ops if type(op) is Compute and op.segments]
    layouts: Counter[int] = Counter(map(id, segments))
    by_id = dict(zip(map(id, segments), segments, strict=True))
    counts: Counter[CommStep] = Counter()
    for key, n in layouts.items():
        for seg in by_id[key]:
            step = getattr(seg, "step", None)
            if step is not None:
                counts[step] += n
    return counts


def _p2p_bytes(programs: dict[int, Program], classes: RankClasses) -> tuple[float, float]:
    """Bytes sent and received point to point by every rank (each representative counted for its class)."""
    sent = received = 0.0
    transfers: dict[int, list[tuple[bool, float]]] = {}  # id(program) → its sends and receives (ranks share)
    for c, rep in enumerate(classes.representatives):
        n = float(classes.multiplicity[c])
        prog = programs[int(rep)]
        ops = transfers.get(id(prog))
        if ops is None:
            ops = transfers[id(prog)] = [(op.is_send, op.bytes) for op in prog.ops if type(op) is SendRecv]
        for is_send, nbytes in ops:  # summed in op order per class, as before
            if is_send:
                sent += n * nbytes
            else:
                received += n * nbytes
    return sent, received


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
    mult = np.zeros(0)
    if len(trace):  # each row's multiplicity through a table by rank (not a dict lookup per row)
        table = np.zeros(max(int(trace.rank.max()), *trace.rank_multiplicity) + 1, dtype=np.int64)
        table[list(trace.rank_multiplicity)] = list(trace.rank_multiplicity.values())
        mult = table[trace.rank]
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
    for extra in (tp_domain_warning(setup.cluster, setup.plan), unmodelled_settings(setup.scenario)):
        if extra is not None:
            warnings.append(extra)
    links, tiers, bottleneck = _links(setup, network, step)
    price = s.config.cost
    cost = run_cost(
        gpus=gpus, tokens_per_step=tokens, step_time_s=step, usd_per_gpu_hour=price.usd_per_gpu_hour,
        train_tokens=price.train_tokens,
    )  # fmt: skip
    p = s.parallelism
    layout = Layout(
        tp=p.tp, pp=p.pp, dp=setup.dims.dp, cp=p.cp, ep=p.ep, etp=setup.dims.expert_tp,
        moe_dispatcher=p.moe_dispatcher, zero=p.zero, sequence_parallel=p.sequence_parallel,
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
        kernel_classes=KernelClasses(
            **{f"{k}_s": v for k, v in m.kernel_class_s.items()}, communication_s=m.exposed_comm_s
        ),
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
        usd_per_gpu_hour=cost.usd_per_gpu_hour,
        usd_per_million_tokens=cost.usd_per_million_tokens,
        train_tokens=cost.train_tokens,
        days=cost.days,
        usd=cost.usd,
        warnings=warnings,
        version=simulator.__version__,
    )


def simulate(
    scenario: Scenario,
    *,
    mode: str | None = None,
    calibration: ComputeCalibration | None = None,
    host_launch_s: float | None = None,
) -> SimulationResult:
    """Simulate one optimizer step of ``scenario`` (``mode``: ``symmetric`` or ``full``, default from the
    scenario's ``engine.mode``; ``calibration`` replaces the GPU's shipped compute profile, ``host_launch_s``
    the framework's host seconds per kernel launch: both for the fitting scripts)."""
    with _cyclic_gc_paused():  # the cluster graph and the symmetry classes allocate as heavily as the engine
        return _simulate(scenario, mode, calibration, host_launch_s)


def _simulate(
    scenario: Scenario, mode: str | None, calibration: ComputeCalibration | None, host_launch_s: float | None
) -> SimulationResult:
    t0 = time.perf_counter()
    cluster = build_cluster(scenario.topology, file=scenario.topology_file)
    setup = Setup(scenario, cluster, mode or scenario.config.engine.mode, calibration, host_launch_s)
    factory = ProgramFactory(setup.workload, setup.inline_comm)
    classes = rank_classes(setup)
    work = step_estimate(scenario, cluster, len(classes.representatives), setup.micro_batches, setup.dims.pp)
    check_work(work)  # refuse before building programs past the engine's limit (engine/budget.py)
    # the engine and the shipped network models only wait on timeouts: the lighter event queue replays a step
    # exactly as simpy's (same (time, priority, insertion) order), at a fraction of the cost per event
    env = HeapEnvironment()
    run = run_step(setup, classes, factory, env, _network(setup, env))
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


@contextmanager
def _cyclic_gc_paused() -> Iterator[None]:
    """CPython's cyclic garbage collector paused while a step is built and run. The engine allocates millions
    of small objects that live until the step ends (ops, events, trace rows), and the generational collector,
    triggered every 700 allocations (``gc.get_threshold``), traverses them again and again: 40% of the CPU of
    the 1,024-GPU GPT-3 step (7.6 s against 4.6 s paused; ``benchmarks/bench_step.py``). Reference counting
    still frees what is dropped; cycles are collected as usual once the step is over."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_step(
    setup: Setup, classes: RankClasses, factory: ProgramFactory, env: simpy.Environment, network: NetworkModel
) -> StepRun:
    """Build the representatives' programs, run them on the engine over ``network``, and measure the step
    (shared by ``simulate`` and the search fast path, so that both time a layout the same way)."""
    with _cyclic_gc_paused():
        return _run_step(setup, classes, factory, env, network)


def _run_step(
    setup: Setup, classes: RankClasses, factory: ProgramFactory, env: simpy.Environment, network: NetworkModel
) -> StepRun:
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
