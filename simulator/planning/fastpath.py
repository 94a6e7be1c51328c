"""The search's fast path: one step of a layout without simpy, with everything a layout shares reused.

What it reuses across the layouts of one search (issue #11):

* the cluster (topology graph, router) is built once;
* routed collectives come from one ``RouteMemo``: each distinct phase geometry is routed once per search,
  whatever layout, stage or size asks for it (``simulator.network.models.base``);
* kernel durations come from the same program builder and compute model as ``clustersim run``
  (``ProgramFactory``, which compiles each chunk's forward and backward once per layout): there is no
  second copy of the kernel formulas here, so the fast path follows the compute model when it changes.

How it times the step: the programs run on the engine itself (``Engine``: the same stream, dependency and
rendezvous semantics, the same matching of collectives) with the analytical network model, on
``HeapEnvironment``, a lighter event queue with simpy's ordering. With the analytical model every op's
duration is fixed when it starts, so the schedule is a max-plus recurrence over stages and micro-batches,
which this evaluates exactly: the result equals ``simulate()`` with ``network.model: analytical`` bit for bit
(``tests/test_fast_path.py``).

Where contention could matter: the flow model only departs from the analytical one when concurrent
collectives together ask more of some link than its capacity. After the run, every launched collective's
interval and its links' demand at its uncontended rate are swept in time order; a layout where some link
is over-subscribed at some instant is marked ``contended``: its fast time is a lower bound, and the search
sends it to the engine with the scenario's own network model when it ranks among the best. Unmarked
layouts agree with the flow engine (``tests/test_fast_path.py``, ``benchmarks/bench_fast_path.py``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from simulator.build.program_builder import ProgramFactory
from simulator.build.setup import Setup
from simulator.engine.groups import GroupResolver, RankClasses
from simulator.hardware.calibration import link_calibration
from simulator.network.clock import HeapEnvironment
from simulator.network.models.analytical import AnalyticalNetwork
from simulator.network.models.base import (
    CollectiveRequest,
    NetworkModel,
    PhaseCache,
    RoutedPhase,
    RouteMemo,
    alone_time,
)
from simulator.parallel.schedules.base import Pass
from simulator.registry import NETWORK_MODELS
from simulator.report.schema import StepReport
from simulator.scenario import Scenario
from simulator.simulate import _report, rank_classes, run_step
from simulator.topology.cluster import Cluster
from simulator.workload.ops import Collective, Compute, SendRecv
from simulator.workload.steps import FusedCompute

# Relative slack when comparing a link's summed demand with its capacity: demands at the uncontended rate
# are exactly at capacity on each phase's own bottleneck, so the sum of one phase alone must not trip it.
_OVERSUBSCRIBED_RTOL = 1e-9
# Relative slack of the stream bound: it sums a stream's durations in another order than the engine adds
# them up, so a stream busy from 0 to the end could exceed the step by a few ulps without it.
_BOUND_RTOL = 1e-9


@dataclass(frozen=True)
class FastResult:
    """A layout's report from the fast path, and whether contention could change it."""

    report: StepReport
    contended: bool  # some link over-subscribed at some instant: the flow model may be slower
    launches: int  # collectives and transfers launched


class _RecordingNetwork(AnalyticalNetwork):
    """The analytical model, remembering when each collective ran and on which routed phases."""

    def __init__(self, env: HeapEnvironment, cache: PhaseCache) -> None:
        super().__init__(env, cache)  # type: ignore[arg-type]  # HeapEnvironment is a simpy.Environment
        self.launched: list[tuple[float, float, tuple[RoutedPhase, ...]]] = []

    def run(self, req: CollectiveRequest, on_done: Callable[[], None]) -> None:
        """Finish after the uncontended duration; record the interval."""
        phases = self.cache.routed(req)
        self._account(phases)
        t0 = self.env.now
        dt = alone_time(phases)
        self.launched.append((t0, t0 + dt, phases))
        self.env.timeout(dt).callbacks.append(lambda _ev: on_done())


class _MemoSetup(Setup):
    """``Setup`` whose routed collectives come from a memo shared by every layout of a search."""

    def __init__(self, scenario: Scenario, cluster: Cluster, memo: RouteMemo) -> None:
        super().__init__(scenario, cluster, "symmetric")
        self._memo = memo

    @cached_property
    def phase_cache(self) -> PhaseCache:
        """Routed collectives: this run's cache over the search's geometry memo."""
        return PhaseCache(self.cluster, self._memo.calib, self.scenario.config.network.algorithm, self._memo)


def _demand(phases: tuple[RoutedPhase, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(links, bytes/s) a collective asks of each link at its uncontended rate: a phase's demand on a link
    is its alone rate × its load there; the collective holds the largest of its phases' demands."""
    ids: list[np.ndarray] = []
    use: list[np.ndarray] = []
    for p in phases:
        if p.link_ids.size and p.max_flow_bytes > 0 and np.isfinite(p.alone_rate):
            ids.append(p.link_ids)
            use.append(p.alone_rate * p.load)
    if not ids:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    links, inv = np.unique(np.concatenate(ids), return_inverse=True)
    per = np.zeros(links.size)
    np.maximum.at(per, inv, np.concatenate(use))
    return links, per


def oversubscribed(
    launched: list[tuple[float, float, tuple[RoutedPhase, ...]]], capacity: np.ndarray
) -> bool:
    """Whether, at some instant, collectives running together ask more of a link than its capacity, each
    at its uncontended rate. A collective is taken to hold all its phases' links for its whole interval:
    conservative, it never misses contention. Launches of one routed collective share its demand, and
    each distinct set of concurrently running collectives is checked once."""
    if len(launched) < 2:
        return False
    index: dict[int, int] = {}
    demands: list[tuple[np.ndarray, np.ndarray]] = []
    geometry = []
    for _, _, phases in launched:
        g = index.get(id(phases))
        if g is None:
            g = index[id(phases)] = len(demands)
            demands.append(_demand(phases))
        geometry.append(g)
    idle = {g for g, (links, _) in enumerate(demands) if not links.size}
    # sweep: ends before starts at the same instant (back-to-back collectives do not overlap)
    events = sorted(
        [(t1, 0, i) for i, (_, t1, _) in enumerate(launched)]
        + [(t0, 1, i) for i, (t0, _, _) in enumerate(launched)]
    )
    active: dict[int, int] = {}
    checked: dict[tuple[tuple[int, int], ...], bool] = {}
    limit = capacity * (1.0 + _OVERSUBSCRIBED_RTOL)
    for _, is_start, i in events:
        g = geometry[i]
        if g in idle:
            continue
        if not is_start:
            active[g] -= 1
            if not active[g]:
                del active[g]
            continue
        active[g] = active.get(g, 0) + 1
        if len(active) == 1 and active[g] == 1:
            continue
        key = tuple(sorted(active.items()))
        hit = checked.get(key)
        if hit is None:
            links = np.concatenate([demands[h][0] for h, _ in key])
            use = np.concatenate([demands[h][1] * n for h, n in key])
            ids, inv = np.unique(links, return_inverse=True)
            hit = checked[key] = bool(np.any(np.bincount(inv, weights=use) > limit[ids]))
        if hit:
            return True
    return False


class FastPath:
    """Times layouts of scenarios on one cluster, sharing the cluster and the routed geometry."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.memo = RouteMemo(cluster, link_calibration())
        # what a layout bounded but not yet evaluated has built: compiled chunks, and once its stream bound
        # is taken, its rank classes (id → (scenario, setup, factory, classes or None))
        self._prepared: dict[int, tuple[Scenario, Setup, ProgramFactory, RankClasses | None]] = {}

    def _prepare(self, scenario: Scenario) -> tuple[Setup, ProgramFactory, RankClasses | None]:
        """The setup and program factory of ``scenario`` (and its classes), built once for its bounds and
        its evaluation."""
        hit = self._prepared.get(id(scenario))
        if hit is not None and hit[0] is scenario:
            return hit[1], hit[2], hit[3]
        setup = _MemoSetup(scenario, self.cluster, self.memo)
        factory = ProgramFactory(setup.workload, setup.inline_comm)
        self._prepared[id(scenario)] = (scenario, setup, factory, None)
        return setup, factory, None

    def compute_bound(self, scenario: Scenario) -> float:
        """A lower bound of the step time from compute alone, with the same compiled chunks as the programs.

        Stage s runs its compute ops one after the other (C_s in all). When its first task is the forward of
        micro-batch 0 through its first chunk, that cannot start before the forwards of micro-batch 0 on
        every earlier stage (F_0 … F_{s−1}); when its last task is the backward of the last micro-batch
        through its first chunk, the earlier stages' backwards of it follow (B_{s−1} … B_0). So the step
        takes at least max_s (Σ_{s'<s} F_{s'} + C_s + Σ_{s'<s} B_{s'}): the pipeline's fill and drain,
        without any communication, ZeRO gather, gradient reduction or optimizer. Raises
        ``InfeasibleConfig`` as ``evaluate`` does."""
        setup, factory, _ = self._prepare(scenario)
        w = setup.workload
        pp, m = setup.dims.pp, w.micro_batches
        whole = "B" if w.schedule.splits_backward else "BW"
        memo: dict[tuple[Pass, object, bool], float] = {}
        kinds: dict[int, object] = {}

        def content(vs: int) -> object:
            """What a chunk's compute durations depend on: whether it holds the embedding or the output layer,
            and the kind of each of its layers (MoE, attention window, MTP) with the parameters it holds, so
            that chunks alike are compiled once (a 35-stage interleaved pipeline has 105 chunks of 3 kinds)."""
            if vs not in kinds:
                units = w.virtual_layers[vs] + w.mtp_units(vs)
                layers = tuple((w.is_moe_unit(i), w.ctx.model.attention_window(i), w.is_mtp(i),
                                w.layer_param_split(i)) for i in units)  # fmt: skip
                kinds[vs] = (vs == 0, vs == w.last_virtual, layers)
            return kinds[vs]

        def duration(kind: Pass, vs: int, first: bool) -> float:
            key = (kind, content(vs), first)
            d = memo.get(key)
            if d is None:
                if kind is Pass.F:
                    segs: tuple[tuple[object, ...], ...] = (factory.forward_steps(vs, first=first),)
                else:
                    segs = factory.backward_steps(vs, "W" if kind is Pass.W else whole)
                d = memo[key] = sum(
                    st.duration_s for seg in segs for st in seg if isinstance(st, FusedCompute)
                )
            return d

        fill = drain = longest = 0.0
        for stage in range(pp):
            tasks = w.schedule.tasks(stage, pp, m, w.chunks)
            total = sum(
                duration(t.kind, w.schedule.virtual_stage(stage, t.chunk, pp), t.mb == 0) for t in tasks
            )
            head, tail = tasks[0], tasks[-1]
            starts = head.kind is Pass.F and head.mb == 0 and head.chunk == 0
            ends = tail.kind is Pass.B and tail.mb == m - 1 and tail.chunk == 0
            longest = max(longest, (fill if starts else 0.0) + total + (drain if ends else 0.0))
            fill += duration(Pass.F, stage, True)
            drain += duration(Pass.B, stage, m == 1)
        return longest

    def release(self, scenario: Scenario) -> None:
        """Forget what the bounds of ``scenario`` built (a layout skipped without being timed)."""
        self._prepared.pop(id(scenario), None)

    def stream_bound(self, scenario: Scenario) -> float:
        """A lower bound of the step time from the busiest stream: the engine runs the ops of one stream of
        a rank one after the other, each for its own duration (a compute op's, or a collective's or a send's
        uncontended time on the same routed geometry as ``evaluate``: the flow model is never faster), so
        the step, which ends with its last op, lasts at least the sum of any stream's durations (e.g. the
        ZeRO-3 gathers of every layer and micro-batch, which the compute bound does not see). Receives are
        left out (their time is the send's, on the peer's stream). It builds the programs and rank classes
        that ``evaluate`` then reuses. Raises ``InfeasibleConfig`` as ``evaluate`` does."""
        setup, factory, classes = self._prepare(scenario)
        if classes is None:
            classes = rank_classes(setup)
            self._prepared[id(scenario)] = (scenario, setup, factory, classes)
        resolver = GroupResolver(setup.plan, classes)
        cache = setup.phase_cache
        comm: dict[tuple[object, ...], float] = {}  # (rank, group, kind, bytes) → uncontended duration
        # per program (the ranks of a stage share one): its compute per stream, and its timed comm ops
        shared: dict[int, tuple[dict[str, float], list[tuple[str, Collective | SendRecv]]]] = {}
        longest = 0.0
        for rep in classes.representatives:
            rank = int(rep)
            prog = factory.build(rank)
            tables = shared.get(id(prog))
            if tables is None:
                compute: defaultdict[str, float] = defaultdict(float)
                ops: list[tuple[str, Collective | SendRecv]] = []
                for op, stream in zip(prog.ops, prog.streams, strict=True):
                    if isinstance(op, Compute):
                        compute[stream] += op.duration_s
                    elif isinstance(op, Collective) or op.is_send:
                        ops.append((stream, op))
                tables = shared[id(prog)] = (dict(compute), ops)
            busy = defaultdict(float, tables[0])
            for stream, op in tables[1]:
                if isinstance(op, Collective):
                    key: tuple[object, ...] = (rank, op.group, op.kind, op.bytes)
                else:
                    key = (rank, "send", op.offset, op.bytes)
                d = comm.get(key)
                if d is None:
                    req = resolver.collective(rank, op)[2] if isinstance(op, Collective) else (
                        resolver.send_request(rank, op))  # fmt: skip
                    d = comm[key] = alone_time(cache.routed(req))
                busy[stream] += d
            longest = max([longest, *busy.values()])
        return longest * (1.0 - _BOUND_RTOL)

    def evaluate(self, scenario: Scenario, network: str = "analytical") -> FastResult:
        """One step of ``scenario`` in symmetric mode; raises ``InfeasibleConfig`` as ``simulate()`` does.

        ``network="analytical"``: uncontended timing, with the contention mark. Any other registered model
        (``"flow"``) runs that model on the engine exactly as ``simulate()`` would (same event order, so the
        same report), only with the cluster and the routed geometry shared; ``contended`` is then False,
        since the model itself accounts for contention."""
        t0 = time.perf_counter()
        setup, factory, classes = self._prepare(scenario)
        del self._prepared[id(scenario)]
        if classes is None:
            classes = rank_classes(setup)
        env = HeapEnvironment()
        if network == "analytical":
            model: NetworkModel = _RecordingNetwork(env, setup.phase_cache)
        else:
            model = NETWORK_MODELS.get(network, field="network.model")(env, setup.phase_cache)
        run = run_step(setup, classes, factory, env, model)
        launched = model.launched if isinstance(model, _RecordingNetwork) else []
        contended = oversubscribed(launched, self.cluster.link_capacity_bytes_per_s)
        report = _report(setup, run.trace, run.metrics, model, run.events, time.perf_counter() - t0)
        return FastResult(report, contended, len(launched))
