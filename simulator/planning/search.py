"""Layout search: time the pruned space on the fast path, confirm the best with the scenario's own network
model, and rank by the objective.

The fast path (``simulator.planning.fastpath``) is the engine with the analytical network model, sharing
the cluster and every routed collective between layouts; it marks the layouts where contention could make
the flow model slower, and its time is then a lower bound. Confirmation runs the scenario's own model on
the same engine. The best ``REFINE_FACTOR × top`` layouts are confirmed, then every further layout whose
fast time is below the ``top``-th best confirmed time (branch and bound: a lower bound that is already
worse cannot enter the top), so the top is the one the engine would give over the whole space.

On large spaces (more than ``BOUND_MIN_CANDIDATES``) the fast pass bounds too: layouts are timed best lower
bound first (the longest stage's compute, from the same compiled chunks, tightened by the busiest stream,
e.g. ZeRO-3's gathers of every layer and micro-batch, when a layout comes up), and one whose bound is no
better than the ``REFINE_FACTOR × top + 1``-th best step timed so far is skipped as ``bounded``; a bounded
layout whose bound beats the confirmed top is timed after all.

The scenario's own layout always competes: when it is one of the simulated candidates it is among the
re-simulated ones; otherwise (pruned, capped, or not expressible, e.g. uneven ``pp_layers``) it is
simulated as given and ranked beside them. So the best layout is never slower than the scenario's own.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import time
from collections.abc import Callable, Generator, Sequence
from contextlib import closing
from dataclasses import dataclass

from simulator.batch.executors.base import A, Done, ExecutorOptions, R, WorkersLost, make_executor
from simulator.batch.runner import simulate_report
from simulator.errors import InfeasibleConfig, ScenarioError
from simulator.planning import OBJECTIVES
from simulator.planning.fastpath import FastPath
from simulator.planning.search_space import Layout, Pruned, Space, build_space, with_layout
from simulator.report.cost import usd_per_million_tokens as report_usd_per_million_tokens
from simulator.report.progress import stage
from simulator.report.schema import StepReport
from simulator.scenario import Scenario
from simulator.topology.loader import build_cluster

FAST_NETWORK = "analytical"  # docs/design.md: the analytical alpha-beta fast path for sweeps
REFINE_FACTOR = 2  # re-simulate the best REFINE_FACTOR × top layouts with the scenario's network model
# Spaces with more candidates than this are timed by branch and bound (``_fast_batch``); smaller ones whole,
# so that every candidate of a small search is ranked.
BOUND_MIN_CANDIDATES = 100


@dataclass(frozen=True)
class SearchOptions:
    """How much to search and what to rank by."""

    top: int = 10
    max_points: int = 200
    workers: int = 1
    objective: str = "tokens_per_s"

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ScenarioError(
                f"unknown objective {self.objective!r}; valid: {', '.join(OBJECTIVES)}", field="--objective"
            )


@dataclass(frozen=True)
class Evaluated:
    """One simulated layout: its report and the network model that timed it."""

    layout: Layout | None  # None: the scenario as given, which the searched axes cannot express
    scenario: Scenario
    report: StepReport
    network: str
    own: bool = False  # the scenario's own layout
    contended: bool = False  # its fast-path run marked contention: the scenario's network model may be slower
    fast_step_s: float | None = None  # the fast path's step time, for a layout confirmed by the engine

    @property
    def label(self) -> str:
        """The layout's compact name."""
        if self.layout is not None:
            return self.layout.label
        assert self.report.layout is not None, "the simulator reports the layout it simulated"
        return f"{Layout.of_report(self.report.layout).label} (as given)"


def usd_per_million_tokens(report: StepReport, usd_per_gpu_hour: float) -> float:
    """What one million trained tokens cost on the report's GPUs at ``usd_per_gpu_hour`` (the report's own
    ``usd_per_million_tokens`` at the scenario's price; one formula, ``simulator/report/cost.py``)."""
    return report_usd_per_million_tokens(report.gpus, report.tokens_per_s, usd_per_gpu_hour)


def _sort_key(ev: Evaluated, objective: str, usd_per_gpu_hour: float) -> tuple[float, float, str]:
    """Best first by the objective; less memory, then the label, break ties."""
    r = ev.report
    value = usd_per_million_tokens(r, usd_per_gpu_hour) if objective == "cost" else -r.tokens_per_s
    return value, r.memory_gib_per_gpu.total, ev.label


@dataclass(frozen=True)
class SearchResult:
    """The ranked layouts and what became of every other point."""

    scenario: Scenario
    options: SearchOptions
    space: Space
    ranked: tuple[Evaluated, ...]  # feasible and fitting, best first; the re-simulated ones lead
    infeasible: tuple[Pruned, ...]  # simulated, but could not run or did not fit
    own: Evaluated | None  # the scenario's own layout, when it runs and fits
    own_reason: str  # why it does not, otherwise ""
    refined: int  # layouts re-simulated with the scenario's network model
    usd_per_gpu_hour: float
    wall_s: float
    bounded: tuple[Pruned, ...] = ()  # not timed: their compute or stream bound cannot reach the top

    @property
    def best(self) -> Evaluated:
        """The winning layout (``ranked`` must not be empty)."""
        return self.ranked[0]


def _attempt(scenario: Scenario) -> StepReport | str:
    """Simulate one layout (a picklable task): its report, or why it cannot run."""
    try:
        return simulate_report(scenario)
    except InfeasibleConfig as e:
        return e.one_line()


@dataclass(frozen=True)
class Bounded:
    """A layout not timed: its compute alone, or its busiest stream, outlasts the whole step of ``keep``
    layouts timed before it."""

    bound_s: float  # a lower bound of its step time (``FastPath.compute_bound`` or ``stream_bound``)
    threshold_s: float  # the keep-th best step time timed when it was skipped
    keep: int
    what: str = "its compute alone"  # which bound: "its compute alone" or "its busiest stream"


Outcome = tuple[StepReport, bool] | Bounded | str  # (report, contended), skipped, or why it cannot run


def _fast_batch(job: tuple[list[Scenario], str | None, int]) -> list[Outcome]:
    """Layouts of one cluster on one ``FastPath`` (a picklable task: a worker builds the cluster once):
    ``network`` None times them on the fast path, else on that model (each scenario's own when "own").

    ``keep`` > 0 (fast path only) is branch and bound, best bound first (``_bounded_batch``)."""
    scenarios, network, keep = job
    if not scenarios:
        return []
    first = scenarios[0]
    fast = FastPath(build_cluster(first.topology, file=first.topology_file))
    if keep > 0 and network is None:
        return _bounded_batch(fast, scenarios, keep)
    out: list[Outcome] = []
    for s in scenarios:
        model = FAST_NETWORK if network is None else s.config.network.model if network == "own" else network
        out.append(_timed(fast, s, model))
    return out


def _timed(fast: FastPath, scenario: Scenario, network: str) -> Outcome:
    """``scenario`` timed on the fast path with ``network``: (report, contended), or why it cannot run."""
    try:
        r = fast.evaluate(scenario, network)
    except InfeasibleConfig as e:
        return e.one_line()
    return (r.report, r.contended)


def _bounded_batch(fast: FastPath, scenarios: list[Scenario], keep: int) -> list[Outcome]:
    """Time ``scenarios`` on the fast path by branch and bound: a layout whose lower bound is already no
    better than the ``keep``-th best step timed so far is skipped (``Bounded``): it cannot be among the
    ``keep`` best.

    Best bound first, with bounds tightened lazily: every layout enters a queue at its compute bound
    (``FastPath.compute_bound``, cheap); the one at the head is first bounded again by its busiest stream
    (``FastPath.stream_bound``: ZeRO-3's gathers, a DP reduction, from the programs and classes its timing
    then reuses) and goes back into the queue if that is later, so that a layout whose communication alone
    outlasts the best steps waits until enough better ones are timed to skip it, instead of being timed
    among the first ``keep`` (where nothing can be skipped yet). The order changes which layouts are timed,
    never the ``keep`` best: each is timed, whatever the order, since its bounds do not exceed its step."""
    out: list[Outcome] = [""] * len(scenarios)
    queue: list[tuple[float, bool, int]] = []  # (lower bound, tightened by the stream bound, index)
    for i, s in enumerate(scenarios):
        try:
            queue.append((fast.compute_bound(s), False, i))
        except InfeasibleConfig as e:
            out[i] = e.one_line()
    heapq.heapify(queue)
    stream_bound: set[int] = set()  # layouts whose bound is their busiest stream's, above their compute's
    best: list[float] = []  # step times of the fitting layouts timed so far, ascending, at most ``keep``
    while queue:
        bound, tight, i = heapq.heappop(queue)
        s = scenarios[i]
        if len(best) >= keep and bound >= best[keep - 1]:
            what = "its busiest stream" if i in stream_bound else "its compute alone"
            out[i] = Bounded(bound, best[keep - 1], keep, what)
            fast.release(s)
            continue
        if not tight:
            try:
                busiest = fast.stream_bound(s)
            except InfeasibleConfig as e:
                out[i] = e.one_line()
                continue
            if busiest > bound:
                stream_bound.add(i)
                heapq.heappush(queue, (busiest, True, i))
                continue
        timed = out[i] = _timed(fast, s, FAST_NETWORK)
        if isinstance(timed, tuple) and timed[0].fits_memory:
            bisect.insort(best, timed[0].step_time_s)
            del best[keep:]
    return out


def _pooled(fn: Callable[[A], R], items: Sequence[A], workers: int) -> Generator[Done[R], None, None]:
    """``fn`` over ``items`` on the batch's local executor, in completion order. When the pool loses its
    workers (``WorkersLost``: the kernel killed one, e.g. for memory on a busy machine; issue #10, point 3,
    where it ended ``clustersim search`` with a traceback), what had not come back runs again in this
    process, one item at a time, the least memory: a result does not depend on the process that made it."""
    seen: set[int] = set()
    executor = make_executor("local", ExecutorOptions(workers=workers))
    try:
        with closing(executor.run(fn, items)) as results:
            for done in results:
                seen.add(done.index)
                yield done
    except WorkersLost as lost:
        left = [i for i in range(len(items)) if i not in seen]
        stage(f"{str(lost).rstrip('.')}; running the {len(left)} unfinished of {len(items)} in this process")
        for i in left:
            yield Done(i, fn(items[i]))


def simulate_all(scenarios: Sequence[Scenario], workers: int) -> list[StepReport | str]:
    """``_attempt`` on every scenario, in order: in this process, or on the batch's local executor."""
    if workers <= 1 or len(scenarios) <= 1:
        return [_attempt(s) for s in scenarios]
    out: list[StepReport | str] = [""] * len(scenarios)
    with closing(_pooled(_attempt, scenarios, workers)) as results:
        for done in results:
            if done.error is not None:
                raise done.error  # a bug (or a user error) in a worker: surface it as it is
            assert done.value is not None
            out[done.index] = done.value
    return out


def fast_all(
    scenarios: Sequence[Scenario], workers: int, network: str | None = None, keep: int = 0
) -> list[Outcome]:
    """``_fast_batch`` over ``scenarios`` (all on one cluster), in order: in this process, or split into one
    interleaved share per worker (so that each worker builds the cluster and routes each geometry once).
    With ``keep`` the pass runs in this process: branch and bound depends on the order, and one process
    that knows every timed layout skips the most (the least CPU; shares would each time ``keep`` at least)."""
    scenarios = list(scenarios)
    shares = 1 if keep > 0 else max(1, min(workers, len(scenarios)))
    if shares == 1:
        return _fast_batch((scenarios, network, keep))
    jobs = [(scenarios[i::shares], network, keep) for i in range(shares)]
    out: list[Outcome] = [""] * len(scenarios)
    with closing(_pooled(_fast_batch, jobs, shares)) as results:
        for done in results:
            if done.error is not None:
                raise done.error
            assert done.value is not None
            out[done.index :: shares] = done.value
    return out


def _evaluate(pairs: Sequence[tuple[Layout | None, Scenario]], workers: int) -> list[Evaluated | str]:
    """Simulate each (layout, scenario): an ``Evaluated`` when it runs and fits, else the reason."""
    results = simulate_all([s for _, s in pairs], workers)
    out: list[Evaluated | str] = []
    for (layout, scenario), result in zip(pairs, results, strict=True):
        if isinstance(result, str):
            out.append(result)
        elif not result.fits_memory:
            out.append(f"does not fit: {result.memory_gib_per_gpu.total:.1f} GiB per GPU")
        else:
            out.append(Evaluated(layout, scenario, result, scenario.config.network.model))
    return out


def _fast_pass(
    scenario: Scenario, layouts: Sequence[Layout], workers: int, keep: int
) -> tuple[list[Evaluated], list[Pruned], list[tuple[Pruned, float]]]:
    """``layouts`` on the fast path: (those that run and fit, the others, the bounded with their bound)."""
    scenarios = [with_layout(scenario, lay, network=FAST_NETWORK) for lay in layouts]
    ok: list[Evaluated] = []
    failed: list[Pruned] = []
    bounded: list[tuple[Pruned, float]] = []
    for lay, sc, outcome in zip(layouts, scenarios, fast_all(scenarios, workers, keep=keep), strict=True):
        if isinstance(outcome, Bounded):
            why = (f"{outcome.what} takes {outcome.bound_s:.3f} s per step, no less than the whole step of "
                   f"the {outcome.keep}th best layout timed before it ({outcome.threshold_s:.3f} s)")  # fmt: skip
            bounded.append((Pruned(lay, "bounded", why), outcome.bound_s))
        elif isinstance(outcome, str):
            failed.append(Pruned(lay, "infeasible", outcome))
        elif not outcome[0].fits_memory:
            failed.append(
                Pruned(
                    lay, "infeasible", f"does not fit: {outcome[0].memory_gib_per_gpu.total:.1f} GiB per GPU"
                )
            )
        else:
            ok.append(Evaluated(lay, sc, outcome[0], FAST_NETWORK, contended=outcome[1]))
    return ok, failed, bounded


def _confirm(scenario: Scenario, chosen: list[Evaluated], workers: int) -> list[Evaluated]:
    """``chosen`` re-timed with the scenario's own network model and engine mode."""
    pairs = [(e.layout, with_layout(scenario, e.layout)) for e in chosen if e.layout is not None]
    if scenario.config.engine.mode != "symmetric":
        fast_s = {e.layout: e.report.step_time_s for e in chosen}
        return [dataclasses.replace(o, fast_step_s=fast_s[o.layout]) for o in _evaluate(pairs, workers)
                if isinstance(o, Evaluated)]  # fmt: skip
    fast = {e.layout: e for e in chosen}
    out: list[Evaluated] = []
    for (lay, sc), outcome in zip(pairs, fast_all([s for _, s in pairs], workers, "own"), strict=True):
        if not isinstance(outcome, tuple) or not outcome[0].fits_memory:
            continue
        was = fast[lay]
        out.append(Evaluated(lay, sc, outcome[0], sc.config.network.model, contended=was.contended,
                             fast_step_s=was.report.step_time_s))  # fmt: skip
    return out


def _refine(
    scenario: Scenario, chosen: list[Evaluated], own: Layout | None, workers: int
) -> tuple[list[Evaluated], Evaluated | None, str]:
    """Re-simulate ``chosen`` with the scenario's own network model (unless the fast pass already used
    it), and the scenario as given unless its layout is among them: (re-simulated, own, why not own)."""
    cfg = scenario.config
    rerun = (cfg.network.model, cfg.engine.mode) != (FAST_NETWORK, "symmetric")
    refined = _confirm(scenario, chosen, workers) if rerun else list(chosen)
    refined = [dataclasses.replace(e, own=own is not None and e.layout == own) for e in refined]
    if own is not None and any(e.layout == own for e in chosen):
        return refined, next((e for e in refined if e.own), None), ""
    last = _evaluate([(own, scenario)], workers)[-1]
    if isinstance(last, Evaluated):
        return refined, dataclasses.replace(last, own=True), ""
    return refined, None, last


def _bound_more(
    scenario: Scenario, refined: list[Evaluated], rest: list[Evaluated], options: SearchOptions, usd: float
) -> tuple[list[Evaluated], list[Evaluated]]:
    """Confirm, best fast time first, every layout of ``rest`` whose fast time (a lower bound of its
    confirmed time) beats the ``top``-th best confirmed one: afterwards none left can enter the top."""
    while rest:
        confirmed = rank(refined, options.objective, usd)
        worst = (
            _sort_key(confirmed[options.top - 1], options.objective, usd)[0]
            if len(confirmed) >= options.top
            else None
        )
        batch = [
            e for e in rest[: max(1, options.workers)]
            if worst is None or _sort_key(e, options.objective, usd)[0] < worst
        ]  # fmt: skip
        if not batch:
            break
        rest = rest[len(batch) :]
        refined = refined + _confirm(scenario, batch, options.workers)
    return refined, rest


def rank(evaluated: list[Evaluated], objective: str, usd_per_gpu_hour: float) -> list[Evaluated]:
    """``evaluated`` best first by ``objective``."""
    return sorted(evaluated, key=lambda e: _sort_key(e, objective, usd_per_gpu_hour))


def _top_step(refined: list[Evaluated], options: SearchOptions, usd: float) -> float:
    """Step time of the ``top``-th best confirmed layout (inf while fewer are confirmed)."""
    confirmed = rank(refined, options.objective, usd)
    return confirmed[options.top - 1].report.step_time_s if len(confirmed) >= options.top else float("inf")


def run_search(scenario: Scenario, options: SearchOptions) -> SearchResult:
    """Search the layouts of ``scenario``'s model on its cluster (see the module docstring)."""
    start = time.perf_counter()
    cluster = build_cluster(scenario.topology, file=scenario.topology_file)
    space = build_space(scenario, cluster, options.max_points)
    own = Layout.of(scenario, cluster.num_gpus)
    usd = scenario.config.cost.usd_per_gpu_hour
    n = REFINE_FACTOR * options.top
    keep = n + 1 if len(space.candidates) > BOUND_MIN_CANDIDATES else 0
    how = "by increasing compute bound, skipping the hopeless" if keep else "every one"
    stage(f"fast path: {len(space.candidates)} candidate layouts, {how}")
    fast, infeasible, bounded = _fast_pass(scenario, space.candidates, options.workers, keep)
    fast = rank(fast, options.objective, usd)
    chosen = fast[:n] + [e for e in fast[n:] if e.layout == own]
    rest = [e for e in fast[n:] if e.layout != own]
    stage(f"confirming the best {len(chosen)} with the {scenario.config.network.model} model")
    refined, own_eval, own_reason = _refine(scenario, chosen, own, options.workers)
    cfg = scenario.config
    if (cfg.network.model, cfg.engine.mode) != (FAST_NETWORK, "symmetric"):
        refined, rest = _bound_more(scenario, refined, rest, options, usd)
        # a layout skipped on its compute or stream bound is timed after all if the bound beats the confirmed top
        late = [(p, b) for p, b in bounded if b < _top_step(refined, options, usd)]
        if late:
            bounded = [x for x in bounded if x not in late]
            more, failed, _ = _fast_pass(scenario, [p.layout for p, _ in late], options.workers, 0)
            infeasible += failed
            rest = rank(rest + more, options.objective, usd)
            refined, rest = _bound_more(scenario, refined, rest, options, usd)
    extra = [own_eval] if own_eval is not None and not any(e.own for e in refined) else []
    ranked = rank(refined + extra, options.objective, usd) + rest
    return SearchResult(
        scenario, options, space, tuple(ranked), tuple(infeasible), own_eval, own_reason,
        len(ranked) - len(rest) - len(extra), usd, time.perf_counter() - start, tuple(p for p, _ in bounded),
    )  # fmt: skip
