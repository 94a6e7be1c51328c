"""Expert parallelism for mixture-of-experts layers (Lepikhin et al. 2020, GShard, arXiv 2006.16668;
Megatron-Core ``MoEAlltoAllTokenDispatcher``).

The routed experts of a layer are split over the ``ep`` ranks of an expert-parallel group (E/ep experts
each). Every rank sends each routed copy of its tokens to the rank holding the chosen expert (dispatch
all-to-all), the experts run, and the outputs come back (combine all-to-all); the backward pass runs the
same two all-to-alls on the gradients. Under uniform routing a rank sends T·k·h elements, (ep−1)/ep of them
to other ranks (docs/reference.md, "MoE dispatch and combine"). As Megatron-Core's dropless all-to-all dispatcher
runs it (Megatron-LM @0d8e0714, ``token_dispatcher.py`` ``MoEAlltoAllTokenDispatcher``): the tokens-per-expert
counts are all-gathered over the group first (the split sizes of the all-to-all) and, when dropless, copied to
the host, which waits for them (``HostSync``: ``frameworks/profiles/megatron-core.yaml``), and the routing
probabilities travel in an all-to-all of their own beside the tokens (fp32, one per token copy), forward and
backward.

Load imbalance: with ``training.expert_load`` skewed, the rank holding the most popular experts receives
``expert_load_factor`` times its fair share of tokens (capped by the capacity factor, beyond which tokens
are dropped). Under symmetry that rank is the one simulated: its expert GEMMs process the factor's share,
and each all-to-all lasts until it has received (and, in the combine, sent back) that many tokens.
"""

from __future__ import annotations

import numpy as np

from simulator.errors import InfeasibleConfig
from simulator.models.spec import ModelSpec
from simulator.parallel.strategies.base import BuildContext, ExpertStrategy
from simulator.registry import STRATEGIES
from simulator.scenario import ExpertLoadConfig
from simulator.workload.ops import Axis, CollectiveKind, CommKind
from simulator.workload.steps import CommStep, HostSync, Step


def expert_loads(experts: int, top_k: int, load: ExpertLoadConfig) -> np.ndarray:
    """Tokens each expert receives relative to the mean (mean 1), most popular first.

    Zipf: the i-th most popular expert is chosen with probability ∝ 1/i^skew. A token's k choices are
    distinct, so no expert receives more than every token: loads are capped at E/k and the excess spread
    over the others in proportion (water-filling)."""
    if load.distribution == "uniform" or load.skew == 0:
        return np.ones(experts)
    w = 1.0 / np.arange(1, experts + 1, dtype=float) ** load.skew
    cap = experts / top_k
    loads = w / w.sum() * experts
    for _ in range(experts):
        over = loads > cap
        if not over.any():
            break
        excess = float((loads[over] - cap).sum())
        loads[over] = cap
        free = ~over & (loads < cap)
        loads[free] += excess * loads[free] / loads[free].sum()
    return loads


def expert_load_factor(model: ModelSpec, load: ExpertLoadConfig, ep: int) -> float:
    """Tokens the most loaded expert-parallel rank processes ÷ the mean, with experts placed contiguously
    (rank r holds experts r·E/ep … (r+1)·E/ep − 1, as Megatron-Core places them) and each expert's load
    capped by the capacity factor (tokens beyond capacity are dropped; Fedus et al. 2021, Switch
    Transformer, Sec. 2.1)."""
    moe = model.moe
    if moe is None:
        return 1.0
    loads = expert_loads(moe.experts, moe.top_k, load)
    if moe.capacity_factor is not None:
        loads = np.minimum(loads, moe.capacity_factor)
    per_rank = loads.reshape(ep, moe.experts // ep).mean(axis=1)
    return float(per_rank.max())


@STRATEGIES.register("expert")
class ExpertParallel(ExpertStrategy):
    """Dispatch and combine all-to-alls over the expert-parallel group."""

    name = "expert"

    def validate(self, ctx: BuildContext) -> None:
        """Each rank must hold whole experts, each split evenly over tensor parallelism."""
        moe = ctx.model.moe
        if moe is None:
            return
        if moe.experts % ctx.dims.ep:
            raise InfeasibleConfig(
                f"ep={ctx.dims.ep} does not divide experts={moe.experts}", field="parallelism.ep"
            )
        etp = ctx.dims.expert_tp
        if ctx.model.expert_ffn % etp:
            raise InfeasibleConfig(
                f"expert tensor parallelism {etp} does not divide the experts' ffn width {ctx.model.expert_ffn}",
                field="parallelism.etp" if ctx.par.etp is not None else "parallelism.tp",
            )

    def _all_to_all(self, ctx: BuildContext, name: str, routed_tokens: float) -> list[Step]:
        if ctx.dims.ep == 1:
            return []
        nbytes = routed_tokens * ctx.model.hidden * ctx.e
        return [CommStep(name, CollectiveKind.ALL_TO_ALL, CommKind.EP, Axis.EP, nbytes)]

    @staticmethod
    def _host_sync(ctx: BuildContext, backward: bool) -> list[Step]:
        """The host's wait for the token counts before a dropless forward dispatch: it needs them to size the
        all-to-all and the per-expert GEMMs (the backward reuses the forward's)."""
        moe = ctx.model.moe
        assert moe is not None
        wait = not backward and moe.capacity_factor is None and ctx.framework.moe.dropless_host_sync
        return [HostSync("moe_dropless_counts")] if wait else []

    def dispatch(self, ctx: BuildContext, routed_tokens: float, backward: bool) -> list[Step]:
        """Tokens to their experts (forward, after the counts that size the all-to-all); gradients of the
        expert inputs back (backward); each with the routing probabilities' all-to-all."""
        moe = ctx.model.moe
        assert moe is not None
        sync = self._host_sync(ctx, backward)
        if ctx.dims.ep == 1:
            return sync
        suffix = "_bwd" if backward else ""
        probs = CommStep(
            f"moe_dispatch_probs{suffix}", CollectiveKind.ALL_TO_ALL, CommKind.EP, Axis.EP, 4.0 * routed_tokens
        )
        counts = CommStep(  # int64 tokens-per-expert of every rank of the group (preprocess)
            "moe_counts_allgather", CollectiveKind.ALL_GATHER, CommKind.EP, Axis.EP, 8.0 * moe.experts * ctx.dims.ep
        )
        return [
            *([] if backward else [counts]),
            *sync,
            *self._all_to_all(ctx, f"moe_dispatch{suffix}", routed_tokens),
            probs,
        ]

    def combine(self, ctx: BuildContext, routed_tokens: float, backward: bool) -> list[Step]:
        """Expert outputs back (forward); gradients of the outputs to the experts (backward)."""
        return self._all_to_all(ctx, "moe_combine_bwd" if backward else "moe_combine", routed_tokens)
