"""Megatron-Core's flex token dispatcher (DeepEP / HybridEP backends, ``parallelism.moe_dispatcher``): a token
travels once to each rank holding one of its experts, so the dispatch and combine all-to-alls carry T·d·h bytes
with d = ep·(1 − C(E − E/ep, k)/C(E, k)) the expected distinct ranks of its k experts (uniform routing) instead of
the all-to-all dispatcher's T·k·h; the routing indices and weights travel with the tokens (12·k bytes per
message), with no count all-gather, no probability all-to-all and no per-expert chunk sort; the host still
waits for the counts once per MoE layer forward (DeepEP's ``buffer.dispatch``)."""

from __future__ import annotations

from math import comb

import pytest
from hypothesis import given
from hypothesis import strategies as st

from simulator.build.program_builder import ProgramFactory
from simulator.build.setup import Setup
from simulator.errors import ScenarioError
from simulator.parallel.strategies.expert_flex import distinct_ranks
from simulator.report.warnings import unmodelled_settings
from simulator.scenario import scenario_from_dict
from simulator.topology.loader import build_cluster
from simulator.workload.ops import Collective, CollectiveKind, CommKind
from simulator.workload.steps import HostSync, KernelStep

MOE = {
    "layers": 2, "hidden": 1024, "heads": 16, "kv_heads": 4, "ffn_hidden": 2048, "vocab": 4096,
    "gated_mlp": True, "linear_bias": False, "moe": {"experts": 32, "top_k": 4},
}  # fmt: skip


def test_distinct_ranks_closed_form() -> None:
    assert distinct_ranks(128, 8, 1) == pytest.approx(1.0)
    assert distinct_ranks(128, 1, 8) == pytest.approx(1.0)  # one expert lives on one rank
    assert distinct_ranks(128, 8, 128) == pytest.approx(8.0)  # one expert per rank: every copy its own rank
    # Qwen3-30B-A3B on EP 8: 16 experts per rank, P(a rank holds none of 8 picks) = C(112, 8) / C(128, 8)
    assert distinct_ranks(128, 8, 8) == pytest.approx(8 * (1 - comb(112, 8) / comb(128, 8)))
    assert distinct_ranks(128, 8, 8) == pytest.approx(5.34, abs=0.01)


def test_group_limited_routing_closed_form() -> None:
    """DeepSeek-V3 (256 experts, top-8 from the best 4 of 8 groups, Sec. 2.1.2) on EP 8, one group per rank: a
    token reaches the ranks of its 4 groups that get one of its 8 picks from their 128 experts."""
    assert distinct_ranks(256, 8, 8, 8, 4) == pytest.approx(4 * (1 - comb(96, 8) / comb(128, 8)))
    # two groups per rank (EP 4): j of a rank's 2 groups chosen, then at least one pick among their experts
    hit = sum(comb(2, j) * comb(6, 4 - j) / comb(8, 4) * (1 - comb(128 - 32 * j, 8) / comb(128, 8)) for j in (1, 2))
    assert distinct_ranks(256, 8, 4, 8, 4) == pytest.approx(4 * hit)
    assert distinct_ranks(256, 8, 8, 1, 1) == pytest.approx(distinct_ranks(256, 8, 8))


@given(st.sampled_from([8, 16, 64, 128, 256]), st.integers(1, 8), st.sampled_from([1, 2, 4, 8, 16]),
       st.sampled_from([(1, 1), (8, 4), (8, 2), (4, 2)]))  # fmt: skip
def test_distinct_ranks_between_one_and_k(experts: int, top_k: int, ep: int, limit: tuple[int, int]) -> None:
    """At least one rank and at most k (or ep); limiting the groups never spreads a token wider."""
    groups, group_topk = limit
    if top_k > group_topk * experts // groups and groups > 1:
        return  # not a valid routing (the scenario refuses it)
    d = distinct_ranks(experts, top_k, ep, groups, group_topk)
    assert 1.0 - 1e-9 <= d <= min(top_k, ep) + 1e-9
    assert d <= distinct_ranks(experts, top_k, ep) + 1e-9


def _setup(make_scenario, dispatcher: str) -> Setup:  # type: ignore[no-untyped-def]
    sc = make_scenario(gpus_per_host=8, model=MOE, micro_batches=2, seq_len=1024, parallelism__ep=8,
                       parallelism__moe_dispatcher=dispatcher)  # fmt: skip
    return Setup(sc, build_cluster(sc.topology, file="<test>"), "symmetric")


@pytest.mark.parametrize("dispatcher", ["deepep", "hybridep"])
def test_flex_messages_are_per_destination_rank(make_scenario, dispatcher: str) -> None:  # type: ignore[no-untyped-def]
    flex, a2a = _setup(make_scenario, dispatcher), _setup(make_scenario, "alltoall")
    prog = ProgramFactory(flex.workload, flex.inline_comm).build(0)
    ops = [op for op in prog.ops if isinstance(op, Collective) and op.comm is CommKind.EP]
    assert {op.kind for op in ops} == {CollectiveKind.ALL_TO_ALL} and not any("probs" in op.name for op in ops)
    tokens, k, h = 1024, MOE["moe"]["top_k"], MOE["hidden"]
    messages = tokens * distinct_ranks(MOE["moe"]["experts"], k, 8)
    fwd = [op.bytes for op in ops if op.name == "moe_dispatch"]
    rest = [op.bytes for op in ops if op.name != "moe_dispatch"]
    assert fwd and fwd == pytest.approx([messages * (2 * h + 12 * k)] * len(fwd))
    assert rest and rest == pytest.approx([messages * 2 * h] * len(rest))
    a2a_ops = ProgramFactory(a2a.workload, a2a.inline_comm).build(0).ops
    assert any(isinstance(op, Collective) and op.kind is CollectiveKind.ALL_GATHER for op in a2a_ops)
    # no per-expert chunk sort; the host waits once per MoE layer forward, as with the all-to-all dispatcher
    lb = flex.workload.layer_builder
    fwd_steps, bwd_steps = lb.forward(True), lb.backward(1.0, True)
    names = [s.name for s in fwd_steps + bwd_steps if isinstance(s, KernelStep)]
    assert not any("sort" in n for n in names) and "moe_permute" in names
    assert sum(isinstance(s, HostSync) for s in fwd_steps) == 1 and not any(isinstance(s, HostSync) for s in bwd_steps)
    assert unmodelled_settings(flex.scenario) is None


def test_across_nvlink_domains_a_token_crosses_the_fabric_once_per_remote_domain(make_scenario) -> None:  # type: ignore[no-untyped-def]
    """EP 16 over two 8-GPU hosts (two NVLink domains): a token's expected remote domains are
    p = 1 − C(E − E/2, k)/C(E, k), and the all-to-all is sized so that the (ep − g)/ep of it that leaves the
    domain (g = 8 ranks per domain) is T·p·h bytes: DeepEP's one RDMA copy per remote node."""
    sc = make_scenario(gpus_per_host=8, nodes=2, model=MOE, micro_batches=2, seq_len=1024, parallelism__ep=16,
                       parallelism__moe_dispatcher="deepep")  # fmt: skip
    s = Setup(sc, build_cluster(sc.topology, file="<test>"), "symmetric")
    assert s.ctx.ep_domains == 2
    e, k = MOE["moe"]["experts"], MOE["moe"]["top_k"]
    remote = 1 - comb(e - e // 2, k) / comb(e, k)
    ops = [op for op in ProgramFactory(s.workload, s.inline_comm).build(0).ops
           if isinstance(op, Collective) and op.name == "moe_combine"]  # fmt: skip
    leaving = [op.bytes * (16 - 8) / 16 for op in ops]
    assert ops and leaving == pytest.approx([1024 * remote * 2 * MOE["hidden"]] * len(ops))
    # fewer bytes than one message per destination rank would send across
    per_rank = 1024 * distinct_ranks(e, k, 16) * 2 * MOE["hidden"] * 8 / 16
    assert leaving[0] < per_rank


@pytest.mark.parametrize(("top_k", "groups", "group_topk", "why"), [
    (4, 3, 1, "router_groups=3 does not divide experts=32"),
    (4, 4, 5, "router_group_topk=5 exceeds router_groups=4"),
    (5, 8, 1, "top_k=5 exceeds the 4 experts"),
])  # fmt: skip
def test_bad_group_limits_are_one_clear_error(make_doc, top_k: int, groups: int, group_topk: int, why: str) -> None:  # type: ignore[no-untyped-def]
    moe = {**MOE["moe"], "top_k": top_k, "router_groups": groups, "router_group_topk": group_topk}
    with pytest.raises(ScenarioError, match=why):
        scenario_from_dict(make_doc(gpus_per_host=8, model={**MOE, "moe": moe}))
