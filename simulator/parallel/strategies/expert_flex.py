"""Expert parallelism through Megatron-Core's flex token dispatcher (``moe_token_dispatcher_type: flex``)
with the DeepEP or HybridEP backend (``parallelism.moe_dispatcher: deepep | hybridep``).

What differs from the all-to-all dispatcher (``expert.py``), as Megatron-LM b0cc2706 (Megatron-Bridge v0.3.0 =
26.02) runs it (``token_dispatcher.py`` ``MoEFlexTokenDispatcher`` / ``_DeepepManager``, ``fused_a2a.py``):

* a token is sent once to each rank holding one of its experts, with its top-k indices and weights beside it
  (DeepEP ``get_dispatch_layout``: ``num_tokens_per_rank``, ``is_token_in_rank``; ``buffer.dispatch``), not once
  per chosen expert; the combine returns one partial sum per rank. With uniform routing a token picks
  ``k`` of ``E`` experts, ``E/ep`` on each rank, so it reaches ``ep·(1 − C(E − E/ep, k)/C(E, k))`` distinct ranks;
* no all-gather of the token counts and no all-to-all of the routing probabilities (they travel with the
  tokens), and no per-expert chunk sort: the received tokens are expanded into per-expert order by one local
  permute (``fused_a2a.py`` dispatch → ``permute``), and folded back by a local unpermute before the combine;
* across NVLink domains (DeepEP's internode kernels; HybridEP's RDMA path) a token crosses the scale-out network
  once per remote domain holding one of its experts and is forwarded over NVLink inside it (DeepEP README,
  "normal kernels": NVLink + RDMA forwarding; DeepSeek-V3 arXiv 2412.19437 Sec. 3.2.2). The all-to-all is sized
  so that its scale-out share is that: ``(N − 1)·(1 − C(E − E/N, k)/C(E, k))`` remote domains per token over
  ``N`` domains; its NVLink share, the forwarding, is then undercounted (NVLink is several times faster);
* the host still waits once per MoE layer forward: ``buffer.dispatch`` busy-waits on the CPU for the received
  counts ("the CPU will wait for GPU's signal to arrive", ``fused_a2a.py``; DeepEP README), which Megatron-Core
  does not avoid (it passes no ``num_worst_tokens``); HybridEP's dropless mode reads its counts from pinned
  memory after a stream sync. The backward reuses the forward's handle and does not wait.

Group-limited routing (``moe.router_groups``, ``moe.router_group_topk``) bounds the ranks and domains a token
reaches. Not modelled: an FP8 dispatch.
"""

from __future__ import annotations

from math import comb

from simulator.parallel.strategies.base import BuildContext
from simulator.parallel.strategies.expert import ExpertParallel
from simulator.registry import STRATEGIES
from simulator.workload.ops import Axis, CollectiveKind, CommKind
from simulator.workload.steps import CommStep, Step

FLEX_DISPATCHERS = ("deepep", "hybridep")  # parallelism.moe_dispatcher values that run as this strategy


def distinct_ranks(experts: int, top_k: int, ep: int, groups: int = 1, group_topk: int = 1) -> float:
    """Expected number of distinct ranks (or NVLink domains) a token's ``top_k`` experts live on, ``experts/ep``
    contiguous experts on each of ``ep`` of them, the experts chosen uniformly without replacement, from the
    token's ``group_topk`` best of ``groups`` contiguous expert groups under group-limited routing (DeepSeek-V3
    Sec. 2.1.2: at most M nodes per token when the groups are its nodes)."""
    if experts % ep or (groups > 1 and ep % groups and groups % ep):  # uneven: as if drawn with replacement
        return ep * (1.0 - (1.0 - 1.0 / ep) ** top_k)
    pool, per_group = experts * group_topk // groups, experts // groups  # the experts of the chosen groups
    if groups > ep:  # whole groups per rank: j of a rank's groups chosen (hypergeometric), then a pick among them
        mine = groups // ep
        hit = sum(comb(mine, j) * comb(groups - mine, group_topk - j) / comb(groups, group_topk)
                  * (1.0 - comb(pool - j * per_group, top_k) / comb(pool, top_k))
                  for j in range(1, min(mine, group_topk) + 1))  # fmt: skip
        return ep * hit
    per_rank = experts // ep  # ranks nest in the groups: a rank is reachable when its group is chosen
    return ep * group_topk / groups * (1.0 - comb(pool - per_rank, top_k) / comb(pool, top_k))


@STRATEGIES.register("expert_flex")
class FlexExpertParallel(ExpertParallel):
    """Dispatch and combine as DeepEP / HybridEP run them: one message per (token, destination rank)."""

    name = "expert_flex"
    local_permute = True

    def wire_copies(self, ctx: BuildContext, routed_tokens: float) -> float:
        """One message per (token, destination rank) for ``routed_tokens`` expert copies."""
        moe = ctx.model.moe
        assert moe is not None
        ranks = distinct_ranks(moe.experts, moe.top_k, ctx.dims.ep, moe.router_groups, moe.router_group_topk)
        return routed_tokens * ranks / moe.top_k

    def _wire_messages(self, ctx: BuildContext, routed_tokens: float) -> float:
        """Messages per rank of the all-to-all: one per (token, destination rank) inside one NVLink domain; across
        ``N`` domains as many as make its scale-out share one per (token, remote domain)."""
        moe = ctx.model.moe
        assert moe is not None
        ep, domains = ctx.dims.ep, ctx.ep_domains
        if domains <= 1 or ep % domains:
            return self.wire_copies(ctx, routed_tokens)
        per_domain = ep // domains
        touched = distinct_ranks(moe.experts, moe.top_k, domains, moe.router_groups, moe.router_group_topk)
        remote = touched * (domains - 1) / domains
        return routed_tokens / moe.top_k * remote * ep / (ep - per_domain)

    def dispatch(self, ctx: BuildContext, routed_tokens: float, backward: bool) -> list[Step]:
        """Each token once to every rank holding one of its experts, with its top-k indices (int64) and weights
        (fp32); the forward waits on the host for the received counts when dropless."""
        moe = ctx.model.moe
        assert moe is not None
        sync = self._host_sync(ctx, backward)
        if ctx.dims.ep == 1:
            return sync
        routing = 0.0 if backward else 12.0 * moe.top_k  # indices and weights travel with the forward tokens
        nbytes = self._wire_messages(ctx, routed_tokens) * (ctx.model.hidden * ctx.e + routing)
        name = "moe_dispatch_bwd" if backward else "moe_dispatch"
        return [*sync, CommStep(name, CollectiveKind.ALL_TO_ALL, CommKind.EP, Axis.EP, nbytes)]

    def combine(self, ctx: BuildContext, routed_tokens: float, backward: bool) -> list[Step]:
        """One partial sum per (token, rank) back (forward); the output gradients out again (backward)."""
        name = "moe_combine_bwd" if backward else "moe_combine"
        return self._all_to_all(ctx, name, self._wire_messages(ctx, routed_tokens))
