"""MoE parallel folding (Liu et al. 2025, arXiv 2504.14960; Megatron-Core ``RankGenerator`` expert order
tp-ep-dp-pp): the expert groups are carved out of a pipeline stage's tp·cp·dp ranks with expert tensor
parallelism ``etp`` fastest, so an expert-parallel group may span tensor-parallel ranks.

Checked against what follows from that definition: the groups partition each stage, ``etp = tp`` reproduces
expert parallelism carved out of data × context, each rank of a folded layout holds 1/ep of the experts
whole and routes its sequence-parallel shard of the tokens, and the published Qwen3-235B layout (TP 2,
EP 32 over DP 16) runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.build.program_builder import ProgramFactory
from simulator.build.setup import Setup
from simulator.errors import InfeasibleConfig
from simulator.parallel.plan import ParallelDims, ParallelPlan
from simulator.scenario import load_scenario
from simulator.simulate import simulate
from simulator.topology.loader import build_cluster
from simulator.workload.ops import Axis, Collective, CollectiveKind

ROOT = Path(__file__).resolve().parent.parent
MOE = {
    "layers": 2, "hidden": 1024, "heads": 16, "kv_heads": 4, "ffn_hidden": 2048, "vocab": 4096,
    "gated_mlp": True, "linear_bias": False, "moe": {"experts": 8, "top_k": 2, "expert_ffn_hidden": 512},
}  # fmt: skip


def _dims(draw: st.DrawFn) -> ParallelDims:
    tp, cp, dp, pp = (draw(st.sampled_from(v)) for v in ([1, 2, 4], [1, 2], [1, 2, 4, 8], [1, 2]))
    etp = draw(st.sampled_from([1, tp]))
    ep = draw(st.sampled_from([e for e in (1, 2, 4, 8, 16) if (tp * cp * dp) % (etp * e) == 0]))
    return ParallelDims(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, etp=etp)


@settings(max_examples=60, deadline=None)
@given(st.composite(_dims)())
def test_expert_groups_partition_each_stage(dims: ParallelDims) -> None:
    plan = ParallelPlan(dims)
    ep, edp = plan.groups(Axis.EP), plan.groups(Axis.EDP)
    assert ep.shape[1] == dims.ep and edp.shape[1] == dims.edp
    for groups in (ep, edp):
        assert np.array_equal(np.sort(groups.ravel()), np.arange(dims.world))  # every rank exactly once
        stage = plan.coords["pp"][groups]
        assert np.all(stage == stage[:, :1])  # inside one pipeline stage
    # an expert-parallel group and an expert-data-parallel group meet in at most one rank
    ep_of, edp_of = np.empty(dims.world, np.int64), np.empty(dims.world, np.int64)
    ep_of[ep], edp_of[edp] = np.arange(len(ep))[:, None], np.arange(len(edp))[:, None]
    assert len(set(zip(ep_of.tolist(), edp_of.tolist(), strict=True))) == dims.world
    # ranks of one EP group hold different experts; of one EDP group, the same ones
    assert all(len(set(plan.coords["ep"][g])) == dims.ep for g in ep)
    assert all(len(set(plan.coords["ep"][g])) == 1 for g in edp)


@settings(max_examples=40, deadline=None)
@given(st.composite(_dims)())
def test_etp_equal_to_tp_is_expert_parallelism_over_data_and_context(dims: ParallelDims) -> None:
    """The unfolded layout: an EP group is ``ep`` consecutive dp·cp indices at fixed tp and pp."""
    dims = ParallelDims(dims.tp, dims.pp, dims.dp, dims.cp, 1, None)
    for ep in (e for e in (1, 2, 4) if (dims.dp * dims.cp) % e == 0):
        d = ParallelDims(dims.tp, dims.pp, dims.dp, dims.cp, ep, None)
        g = np.arange(d.world).reshape(d.pp, d.dp, d.cp, d.tp).transpose(0, 3, 1, 2)  # [pp, tp, dp, cp]
        expected = g.reshape(d.pp, d.tp, d.dp * d.cp // ep, ep).reshape(-1, ep)
        assert np.array_equal(ParallelPlan(d).groups(Axis.EP), expected)


def _setup(make_scenario, **kw) -> Setup:  # type: ignore[no-untyped-def]
    scenario = make_scenario(gpus_per_host=8, model=MOE, **kw)
    return Setup(scenario, build_cluster(scenario.topology, file="<test>"), "symmetric")


def test_folded_experts_are_whole_and_route_the_sequence_shard(make_scenario) -> None:  # type: ignore[no-untyped-def]
    """TP 2 (sequence parallel) × DP 4 with EP 8, etp 1: each rank holds one of the 8 experts whole, its
    all-to-alls carry its T/tp shard's k copies, and no TP collective surrounds the MoE block."""
    kw = dict(tp=2, parallelism__sequence_parallel=True, parallelism__ep=8)
    folded = _setup(make_scenario, parallelism__etp=1, **kw)
    p = folded.workload.params
    assert folded.workload.layer_param_split(0)[1] == pytest.approx(p.routed_experts_per_layer / 8)
    ctx = folded.ctx
    assert ctx.moe_tokens * 2 == ctx.tokens
    prog = ProgramFactory(folded.workload, folded.inline_comm).build(0)
    a2a = [
        op for op in prog.ops
        if isinstance(op, Collective) and op.kind is CollectiveKind.ALL_TO_ALL and "probs" not in op.name
    ]  # fmt: skip
    assert a2a and all(op.group == Axis.EP for op in a2a)
    per_copy = MOE["hidden"] * ctx.e
    assert {op.bytes for op in a2a} == {ctx.tokens / 2 * MOE["moe"]["top_k"] * per_copy}
    # the folded EP group spans both TP ranks of a host
    ep_group = folded.plan.group_of(Axis.EP, 0)
    assert set(folded.plan.coords["tp"][ep_group]) == {0, 1}
    # unfolded (etp = tp = 2) needs ep to divide dp·cp = 4: the same layout is refused
    with pytest.raises(InfeasibleConfig, match="ep·etp=8·2"):
        _ = _setup(make_scenario, **kw).dims


def test_folding_needs_sequence_parallelism(make_scenario) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InfeasibleConfig, match="sequence_parallel"):
        _ = _setup(make_scenario, tp=2, parallelism__ep=2, parallelism__etp=1).dims


def test_published_folded_layout_runs() -> None:
    """Megatron-Bridge 25.11's Qwen3-235B on 256 H100 (TP 2, PP 8, EP 32 over DP 16, etp 1) simulates
    and fits in memory; the data file records it as MoE parallel folding."""
    path = ROOT / "scenarios/validation/modern/megatron-bridge-25.11-h100/qwen3-235b-256.yaml"
    report = simulate(load_scenario(path)).report
    assert report.step_time_s > 0 and report.comm.ep_s > 0
    assert report.fits_memory
