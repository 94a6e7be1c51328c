"""Layout search: simulate the pruned space on the fast analytical network model, re-simulate the best
with the scenario's own network model, and rank by the objective.

The scenario's own layout always competes: when it is one of the simulated candidates it is among the
re-simulated ones; otherwise (pruned, capped, or not expressible, e.g. uneven ``pp_layers``) it is
simulated as given and ranked beside them. So the best layout is never slower than the scenario's own.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass

from simulator.batch.executors.base import ExecutorOptions, make_executor
from simulator.batch.runner import simulate_report
from simulator.errors import InfeasibleConfig, ScenarioError
from simulator.planning import OBJECTIVES, SECONDS_PER_HOUR
from simulator.planning.search_space import Layout, Pruned, Space, build_space, with_layout
from simulator.report.schema import StepReport
from simulator.scenario import Scenario
from simulator.topology.loader import build_cluster

FAST_NETWORK = "analytical"  # DESIGN.md: the analytical alpha-beta fast path for sweeps
REFINE_FACTOR = 2  # re-simulate the best REFINE_FACTOR × top layouts with the scenario's network model


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

    @property
    def label(self) -> str:
        """The layout's compact name."""
        if self.layout is not None:
            return self.layout.label
        assert self.report.layout is not None, "the simulator reports the layout it simulated"
        return f"{Layout.of_report(self.report.layout).label} (as given)"


def usd_per_million_tokens(report: StepReport, usd_per_gpu_hour: float) -> float:
    """What one million trained tokens cost on the report's GPUs at ``usd_per_gpu_hour``."""
    return usd_per_gpu_hour * report.gpus / SECONDS_PER_HOUR / report.tokens_per_s * 1e6


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


def simulate_all(scenarios: Sequence[Scenario], workers: int) -> list[StepReport | str]:
    """``_attempt`` on every scenario, in order: in this process, or on the batch's local executor."""
    if workers <= 1 or len(scenarios) <= 1:
        return [_attempt(s) for s in scenarios]
    out: list[StepReport | str] = [""] * len(scenarios)
    executor = make_executor("local", ExecutorOptions(workers=workers))
    with closing(executor.run(_attempt, scenarios)) as results:
        for done in results:
            if done.error is not None:
                raise done.error  # a bug (or a user error) in a worker: surface it as it is
            assert done.value is not None
            out[done.index] = done.value
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


def _fast_pass(scenario: Scenario, space: Space, workers: int) -> tuple[list[Evaluated], list[Pruned]]:
    """Every candidate on the analytical network model: (those that run and fit, the others)."""
    pairs = [(lay, with_layout(scenario, lay, network=FAST_NETWORK)) for lay in space.candidates]
    ok: list[Evaluated] = []
    failed: list[Pruned] = []
    for lay, outcome in zip(space.candidates, _evaluate(pairs, workers), strict=True):
        if isinstance(outcome, Evaluated):
            ok.append(outcome)
        else:
            failed.append(Pruned(lay, "infeasible", outcome))
    return ok, failed


def _refine(
    scenario: Scenario, chosen: list[Evaluated], own: Layout | None, workers: int
) -> tuple[list[Evaluated], Evaluated | None, str]:
    """Re-simulate ``chosen`` with the scenario's own network model (unless the fast pass already used
    it), and the scenario as given unless its layout is among them: (re-simulated, own, why not own)."""
    cfg = scenario.config
    rerun = (cfg.network.model, cfg.engine.mode) != (FAST_NETWORK, "symmetric")
    pairs: list[tuple[Layout | None, Scenario]] = []
    if rerun:
        pairs += [(e.layout, with_layout(scenario, e.layout)) for e in chosen if e.layout]
    own_chosen = own is not None and any(e.layout == own for e in chosen)
    if not own_chosen:
        pairs.append((own, scenario))
    outcomes = _evaluate(pairs, workers)
    refined = [o for o in outcomes[: len(chosen)] if isinstance(o, Evaluated)] if rerun else list(chosen)
    refined = [dataclasses.replace(e, own=own is not None and e.layout == own) for e in refined]
    if own_chosen:
        return refined, next((e for e in refined if e.own), None), ""
    last = outcomes[-1]
    if isinstance(last, Evaluated):
        return refined, dataclasses.replace(last, own=True), ""
    return refined, None, last


def rank(evaluated: list[Evaluated], objective: str, usd_per_gpu_hour: float) -> list[Evaluated]:
    """``evaluated`` best first by ``objective``."""
    return sorted(evaluated, key=lambda e: _sort_key(e, objective, usd_per_gpu_hour))


def run_search(scenario: Scenario, options: SearchOptions) -> SearchResult:
    """Search the layouts of ``scenario``'s model on its cluster (see the module docstring)."""
    start = time.perf_counter()
    cluster = build_cluster(scenario.topology, file=scenario.topology_file)
    space = build_space(scenario, cluster, options.max_points)
    own = Layout.of(scenario, cluster.num_gpus)
    usd = scenario.config.cost.usd_per_gpu_hour
    fast, infeasible = _fast_pass(scenario, space, options.workers)
    fast = rank(fast, options.objective, usd)
    n = REFINE_FACTOR * options.top
    chosen = fast[:n] + [e for e in fast[n:] if e.layout == own]
    rest = [e for e in fast[n:] if e.layout != own]
    refined, own_eval, own_reason = _refine(scenario, chosen, own, options.workers)
    extra = [own_eval] if own_eval is not None and not any(e.own for e in refined) else []
    ranked = rank(refined + extra, options.objective, usd) + rest
    return SearchResult(
        scenario, options, space, tuple(ranked), tuple(infeasible), own_eval, own_reason, len(chosen), usd,
        time.perf_counter() - start,
    )  # fmt: skip
