"""The layouts ``clustersim search`` tries: declared axes, their product, and the rules that prune it.

Axes, in product order (``itertools.product``): tp (divisors of the GPUs per host), pp (divisors of the
layers: an even split, so ``pp_layers`` is never needed), micro_batch, (schedule, virtual_stages), zero,
sequence_parallel, recompute, and for a mixture-of-experts model ep (divisors of the experts) and etp (the
experts' own tensor parallelism: tp, Megatron-Core's default, or 1, the experts whole on each rank as MoE
parallel folding runs them; Liu et al. 2025, arXiv 2504.14960) and the token dispatcher (Megatron-Core's
all-to-all one, or the flex one: the scenario's DeepEP or HybridEP backend, DeepEP if it names neither). dp is
derived (gpus / (tp·pp·cp)); cp and every other setting of the scenario are kept. GPipe is not searched: it has 1F1B's bubble with m instead of p micro-batches in flight
(docs/reference.md, pipeline schedules), so it never beats 1F1B.

Each pruned point keeps the first rule it breaks, cheapest first:

``divisibility``  tp | heads, tp·pp·cp | gpus, ep·etp | tp·cp·dp (the folded expert grid of a stage),
                  dp·micro_batch | global_batch; pp·v | layers for
                  chunked schedules; interleaved needs pp > 1 and micro-batches a multiple of pp (Megatron's
                  constraints), dualpipev at least 2·pp micro-batches (its reference's assertion)
``equivalent``    a setting that changes nothing: sequence parallelism at tp = 1, ZeRO > 0 at dp = 1
``invalid``       the strategies' and schedules' own checks (``simulate.Setup``: kv_heads, ffn_hidden ...)
``memory``        the report's own memory estimate (``simulator.build.memory``) exceeds the GPU's HBM
``dominated``     a lighter setting of the same layout fits: recompute none < selective < full and ZeRO
                  1 < 2 < 3 only save memory, never time (ZeRO 2 moves the same bytes as 1; 3 adds gathers)

The survivors are ordered as a practitioner would try them (``practitioner_order``) and capped.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.build.setup import DATA_STRATEGY, Setup
from simulator.build.setup import (
    peak_memory as peak_stage_memory,  # the report's own estimate: one source of truth
)
from simulator.errors import InfeasibleConfig
from simulator.parallel.strategies.expert_flex import FLEX_DISPATCHERS
from simulator.registry import SCHEDULES, STRATEGIES
from simulator.report.schema import Layout as ReportLayout
from simulator.scenario import Scenario
from simulator.topology.cluster import Cluster
from simulator.units import GiB

MICRO_BATCHES = (1, 2, 4, 8)
# (schedule, chunks per rank); interleaved with 2 to 8 chunks as Narayanan et al. 2021 (arXiv 2104.04473,
# Fig. 12-13) run it. A schedule is searched only where it is registered.
SCHEDULE_CHOICES: tuple[tuple[str, int], ...] = (
    ("1f1b", 1),
    ("zero-bubble", 1),
    ("zb-h2", 1),  # ZB-H1's order with 2p − 1 micro-batches in flight (Qi et al. 2024, Table 1)
    ("dualpipev", 2),  # DeepSeek-V3's DualPipe cut in half: two chunks per rank in a V
    *(("interleaved", v) for v in (2, 3, 4, 6, 8)),
)
ZERO_STAGES = (0, 1, 2, 3)  # a stage is searched once its strategy is registered (simulate.DATA_STRATEGY)
SEQUENCE_PARALLEL = (True, False)
RECOMPUTE = ("none", "selective", "full")  # lightest first
# Hardware/model FLOP ratio of full recomputation (Korthikanti et al. 2022; docs/reference.md, FLOPs).
FULL_RECOMPUTE_FLOP_RATIO = 4.0 / 3.0


@dataclass(frozen=True)
class Layout:
    """One point of the search space (dp derived from the GPU count)."""

    tp: int
    pp: int
    dp: int
    micro_batch: int
    schedule: str
    virtual_stages: int
    zero: int
    sequence_parallel: bool
    recompute: str
    ep: int = 1
    etp: int | None = None  # None: tp (Megatron-Core's default)
    dispatcher: str | None = None  # parallelism.moe_dispatcher; None: the all-to-all dispatcher

    @property
    def expert_tp(self) -> int:
        """Tensor-parallel degree inside the experts."""
        return self.tp if self.etp is None else self.etp

    @classmethod
    def of(cls, scenario: Scenario, gpus: int) -> Layout | None:
        """The scenario's own layout, or None when the axes cannot express it (uneven ``pp_layers``)."""
        p, t = scenario.parallelism, scenario.training
        dp = p.dp if p.dp is not None else gpus // (p.tp * p.pp * p.cp)
        if p.pp_layers is not None or dp * p.tp * p.pp * p.cp != gpus:
            return None
        etp = None if p.etp in (None, p.tp) else p.etp
        dispatcher = p.moe_dispatcher if p.moe_dispatcher in FLEX_DISPATCHERS else None
        return cls(p.tp, p.pp, dp, t.micro_batch, p.schedule, p.virtual_stages, p.zero,
                   p.sequence_parallel, t.recompute, p.ep, etp, dispatcher)  # fmt: skip

    @classmethod
    def of_report(cls, lay: ReportLayout) -> Layout:
        """The layout a report says was simulated."""
        fields = {f.name: getattr(lay, f.name) for f in dataclasses.fields(cls) if f.name not in ("etp", "dispatcher")}
        dispatcher = lay.moe_dispatcher if lay.moe_dispatcher in FLEX_DISPATCHERS else None
        return cls(**fields, etp=None if lay.etp == lay.tp else lay.etp, dispatcher=dispatcher)

    def sections(self) -> dict[str, dict[str, Any]]:
        """Scenario sections → keys that set this layout (dp derived, layers split evenly)."""
        return {
            "parallelism": {
                "tp": self.tp, "pp": self.pp, "dp": None, "pp_layers": None, "schedule": self.schedule,
                "virtual_stages": self.virtual_stages, "zero": self.zero,
                "sequence_parallel": self.sequence_parallel, "ep": self.ep, "etp": self.etp,
                "moe_dispatcher": self.dispatcher,
            },
            "training": {"micro_batch": self.micro_batch, "recompute": self.recompute},
        }  # fmt: skip

    def overrides(self) -> list[str]:
        """``--set`` arguments that turn the scenario into this layout."""
        return [f"{sec}.{k}={_yaml_scalar(v)}" for sec, kv in self.sections().items() for k, v in kv.items()]

    @property
    def label(self) -> str:
        """Compact name, e.g. ``tp2 pp4 dp2 mb1 interleaved×2 z1 sp rc:none``."""
        chunks = f"×{self.virtual_stages}" if self.virtual_stages > 1 else ""
        sp = " sp" if self.sequence_parallel else ""
        experts = (f" ep{self.ep}" if self.ep > 1 else "") + (f" etp{self.etp}" if self.etp is not None else "")
        experts += f" {self.dispatcher}" if self.dispatcher is not None else ""
        return (f"tp{self.tp} pp{self.pp} dp{self.dp} mb{self.micro_batch} {self.schedule}{chunks} "
                f"z{self.zero}{sp} rc:{self.recompute}{experts}")  # fmt: skip


def _yaml_scalar(value: object) -> str:
    """A value as ``--set`` parses it back (YAML): null, true/false, numbers and names as they are."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def with_layout(scenario: Scenario, layout: Layout, *, network: str | None = None) -> Scenario:
    """``scenario`` with ``layout`` (and optionally another network model); the values are valid by
    construction of the axes, so the frozen config is copied without re-reading any file."""
    cfg = scenario.config
    parts = layout.sections()
    update: dict[str, Any] = {
        "parallelism": cfg.parallelism.model_copy(update=parts["parallelism"]),
        "training": cfg.training.model_copy(update=parts["training"]),
    }
    if network is not None:
        update["network"] = cfg.network.model_copy(update={"model": network})
        update["engine"] = cfg.engine.model_copy(update={"mode": "symmetric"})
    return scenario.model_copy(update={"config": cfg.model_copy(update=update)})


@dataclass(frozen=True)
class Pruned:
    """A layout that is not simulated (or did not run), the rule it broke and why."""

    layout: Layout
    rule: str
    reason: str


@dataclass(frozen=True)
class SpaceContext:
    """What the rules need to know about the scenario and the cluster."""

    gpus: int
    gpus_per_host: int
    layers: int
    heads: int
    hidden: int
    seq_len: int
    cp: int
    experts: int  # routed experts per MoE layer; 0 for a dense model
    expert_ffn: int
    flex: str  # the flex dispatcher backend searched: the scenario's, or deepep
    global_batch: int
    hbm_bytes: float
    zero_stages: tuple[int, ...]
    schedules: tuple[tuple[str, int], ...]
    own: Layout | None


def space_context(scenario: Scenario, cluster: Cluster) -> SpaceContext:
    """The context of ``scenario`` on ``cluster``; tp stays within the smallest host."""
    per_host = np.bincount(cluster.host_of_gpu, minlength=cluster.num_hosts)
    zero = tuple(z for z in ZERO_STAGES if DATA_STRATEGY.get(z) in STRATEGIES)
    m, p = scenario.model, scenario.parallelism
    return SpaceContext(
        gpus=cluster.num_gpus, gpus_per_host=int(per_host.min()), layers=m.layers, heads=m.heads,
        hidden=m.hidden, seq_len=scenario.training.seq_len, cp=p.cp,
        experts=m.moe.experts if m.moe is not None else 0, expert_ffn=m.expert_ffn if m.moe is not None else 0,
        flex=p.moe_dispatcher if p.moe_dispatcher in FLEX_DISPATCHERS else "deepep",
        global_batch=scenario.training.global_batch, hbm_bytes=min(g.hbm_bytes for g in cluster.gpu_specs),
        zero_stages=zero, schedules=tuple(c for c in SCHEDULE_CHOICES if c[0] in SCHEDULES),
        own=Layout.of(scenario, cluster.num_gpus),
    )  # fmt: skip


def divisors(n: int) -> tuple[int, ...]:
    """Positive divisors of ``n``, ascending."""
    return tuple(d for d in range(1, n + 1) if n % d == 0)


def enumerate_layouts(ctx: SpaceContext) -> Iterator[Layout]:
    """Every point of the declared axes (dp 0 where tp·pp·cp does not divide the GPUs)."""
    pp_axis = tuple(d for d in divisors(ctx.layers) if d <= ctx.gpus)
    axes = (divisors(ctx.gpus_per_host), pp_axis, MICRO_BATCHES, ctx.schedules, ctx.zero_stages,
            SEQUENCE_PARALLEL, RECOMPUTE)  # fmt: skip
    ep_axis = tuple(d for d in divisors(ctx.experts) if d <= ctx.gpus) if ctx.experts else (1,)
    for tp, pp, mb, (schedule, v), zero, sp, rc in itertools.product(*axes):
        model_par = tp * pp * ctx.cp
        dp = ctx.gpus // model_par if ctx.gpus % model_par == 0 else 0
        etp_axis: tuple[int | None, ...] = (None, 1) if ctx.experts and tp > 1 else (None,)
        dispatchers: tuple[str | None, ...] = (None, ctx.flex) if ctx.experts else (None,)
        for ep, etp, dispatcher in itertools.product(ep_axis, etp_axis, dispatchers):
            yield Layout(tp, pp, dp, mb, schedule, v, zero, sp, rc, ep, etp, dispatcher)


# ----------------------------------------------------------------------------------------- rules
def _divisibility(lay: Layout, ctx: SpaceContext) -> str | None:
    """Shapes that cannot split: the first broken divisibility rule, in words."""
    if ctx.heads % lay.tp:
        return f"tp={lay.tp} does not divide heads={ctx.heads}"
    if lay.dp == 0:
        return f"tp·pp·cp={lay.tp}·{lay.pp}·{ctx.cp} does not divide {ctx.gpus} GPUs"
    stage = lay.tp * ctx.cp * lay.dp  # the ranks of a stage, over which the expert grid folds
    if stage % (lay.ep * lay.expert_tp):
        return f"ep·etp={lay.ep}·{lay.expert_tp} does not divide tp·cp·dp={stage}"
    if ctx.experts and ctx.expert_ffn % lay.expert_tp:
        return f"etp={lay.expert_tp} does not divide the experts' ffn width {ctx.expert_ffn}"
    if ctx.global_batch % (lay.dp * lay.micro_batch):
        return f"dp·micro_batch={lay.dp}·{lay.micro_batch} does not divide global_batch={ctx.global_batch}"
    if lay.virtual_stages > 1 and ctx.layers % (lay.pp * lay.virtual_stages):
        return f"pp·virtual_stages={lay.pp}·{lay.virtual_stages} does not divide layers={ctx.layers}"
    micro_batches = ctx.global_batch // (lay.dp * lay.micro_batch)
    if lay.schedule == "dualpipev" and micro_batches < 2 * lay.pp:
        return f"dualpipev needs at least 2·pp={2 * lay.pp} micro-batches, got {micro_batches}"
    if lay.schedule != "interleaved":
        return None
    if lay.pp == 1:
        return "interleaved needs pp > 1"
    if micro_batches % lay.pp:
        return f"interleaved needs micro-batches ({micro_batches}) to be a multiple of pp={lay.pp}"
    return None


def _equivalent(lay: Layout, ctx: SpaceContext) -> str | None:
    """Settings that change nothing and would only duplicate another point."""
    if lay.sequence_parallel and lay.tp == 1:
        return "sequence parallelism with tp=1 is the same as without"
    if lay.zero > 0 and lay.dp == 1:
        return f"zero={lay.zero} with dp=1 shards nothing: the same as zero=0"
    if lay.dispatcher is not None and lay.ep == 1:
        return f"the {lay.dispatcher} dispatcher with ep=1 moves no tokens: the same as all-to-all"
    if lay.schedule in ("zero-bubble", "zb-h2", "dualpipev") and lay.pp == 1:
        return f"{lay.schedule} with pp=1 has no bubble to fill: the same as 1f1b"
    return None


def structural_rule(lay: Layout, ctx: SpaceContext) -> tuple[str, str] | None:
    """(rule, reason) of the first cheap rule ``lay`` breaks, or None."""
    for rule, check in (("divisibility", _divisibility), ("equivalent", _equivalent)):
        reason = check(lay, ctx)
        if reason is not None:
            return rule, reason
    return None


def memory_or_reason(scenario: Scenario, cluster: Cluster, lay: Layout) -> tuple[float, str]:
    """(peak bytes per GPU, "") from the simulator's own checks and memory estimate, or (nan, reason)."""
    setup = Setup(with_layout(scenario, lay), cluster, "symmetric")
    try:
        _ = setup.workload  # runs every strategy's and the schedule's validation
        return peak_stage_memory(setup).total, ""
    except InfeasibleConfig as e:
        return math.nan, e.reason


def lighter_or_same(a: Layout, b: Layout) -> bool:
    """``a`` is ``b`` with less (or equal) recomputation and ZeRO sharding (ZeRO 0 is its own ladder)."""
    if dataclasses.replace(a, zero=b.zero, recompute=b.recompute) != b:
        return False
    zero_ok = a.zero == b.zero or 1 <= a.zero <= b.zero
    return zero_ok and RECOMPUTE.index(a.recompute) <= RECOMPUTE.index(b.recompute)


def undominated(fitting: list[Layout]) -> tuple[list[Layout], list[Pruned]]:
    """Keep the fitting layouts no lighter fitting setting of the same layout dominates."""
    groups: dict[Layout, list[Layout]] = defaultdict(list)
    for lay in fitting:
        groups[dataclasses.replace(lay, zero=0, recompute="none")].append(lay)
    kept: list[Layout] = []
    pruned: list[Pruned] = []
    for group in groups.values():
        for lay in group:
            better = next((a for a in group if a != lay and lighter_or_same(a, lay)), None)
            if better is None:
                kept.append(lay)
            else:
                why = f"zero={better.zero} recompute={better.recompute} fits and is never slower"
                pruned.append(Pruned(lay, "dominated", why))
    return kept, pruned


# ------------------------------------------------------------------------------------ priority, cap
def overhead_factor(lay: Layout, ctx: SpaceContext) -> float:
    """Closed-form slowdown over a perfect step: pipeline bubble (p−1)/(v·m) of the ideal time, times
    the recomputed FLOPs (4/3 full, 1 + s/(6h) selective; docs/reference.md). Needs no simulation."""
    micro_batches = ctx.global_batch // (lay.dp * lay.micro_batch)
    bubble = (lay.pp - 1) / (lay.virtual_stages * micro_batches)
    recompute = {"none": 1.0, "selective": 1.0 + ctx.seq_len / (6.0 * ctx.hidden)}
    return (1.0 + bubble) * recompute.get(lay.recompute, FULL_RECOMPUTE_FLOP_RATIO)


def _priority(lay: Layout, ctx: SpaceContext) -> tuple[Any, ...]:
    """Sort key: the scenario's own layout, the least closed-form overhead, then Megatron practice
    (Narayanan 2021; Korthikanti 2022): sequence parallelism with tp, the distributed optimizer, less
    model parallelism, small micro-batches, fewer chunks."""
    return (lay != ctx.own, round(overhead_factor(lay, ctx), 2), lay.tp > 1 and not lay.sequence_parallel,
            lay.zero != 1, lay.tp * lay.pp, lay.tp, lay.micro_batch, lay.virtual_stages, lay.zero,
            RECOMPUTE.index(lay.recompute), lay.etp is not None, lay.ep, lay.dispatcher is not None)  # fmt: skip


def practitioner_order(layouts: list[Layout], ctx: SpaceContext) -> list[Layout]:
    """Round-robin over (tp, pp) pairs, each pair's layouts in ``_priority`` order, so that a cap keeps
    the best guesses of every pair before the second guesses of any."""
    pairs: dict[tuple[int, int], list[Layout]] = defaultdict(list)
    for lay in sorted(layouts, key=lambda x: _priority(x, ctx)):
        pairs[(lay.tp, lay.pp)].append(lay)
    queues = list(pairs.values())  # in order of each pair's best layout
    out: list[Layout] = []
    for rank in range(max((len(q) for q in queues), default=0)):
        out += [q[rank] for q in queues if rank < len(q)]
    return out


@dataclass(frozen=True)
class Space:
    """The pruned, ordered search space."""

    size: int  # points of the declared axes
    candidates: tuple[Layout, ...]  # to simulate, in priority order
    capped: tuple[Layout, ...]  # fit, beyond max_points
    pruned: tuple[Pruned, ...]
    memory_bytes: dict[Layout, float]  # estimate of every fitting layout


def build_space(scenario: Scenario, cluster: Cluster, max_points: int) -> Space:
    """Enumerate, prune (cheap rules first, then the simulator's checks and memory), order and cap."""
    ctx = space_context(scenario, cluster)
    pruned: list[Pruned] = []
    memory: dict[Layout, float] = {}
    size = 0
    checked: dict[Layout, tuple[float, str]] = {}  # the dispatcher changes neither memory nor validity
    for lay in enumerate_layouts(ctx):
        size += 1
        broken = structural_rule(lay, ctx)
        if broken is not None:
            pruned.append(Pruned(lay, *broken))
            continue
        twin = lay if lay.dispatcher is None else dataclasses.replace(lay, dispatcher=None)
        if twin not in checked:
            checked[twin] = memory_or_reason(scenario, cluster, twin)
        mem, reason = checked[twin]
        if reason:
            pruned.append(Pruned(lay, "invalid", reason))
        elif mem > ctx.hbm_bytes:
            need = f"needs {mem / GiB:.1f} GiB per GPU > {ctx.hbm_bytes / GiB:.1f} GiB HBM"
            pruned.append(Pruned(lay, "memory", need))
        else:
            memory[lay] = mem
    kept, dominated = undominated(list(memory))
    ordered = practitioner_order(kept, ctx)
    return Space(
        size, tuple(ordered[:max_points]), tuple(ordered[max_points:]), (*pruned, *dominated), memory
    )
