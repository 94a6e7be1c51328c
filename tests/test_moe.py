"""Expert parallelism: the dispatch and combine all-to-alls of docs/reference.md (T·k·h·bytes per rank, (E−1)/E of
it leaving the rank under uniform routing; two forward, two backward per MoE layer), expert weights sharded
over the expert-parallel group with their gradients reduced over the expert-data-parallel group, routing
skew making the most loaded rank set the pace, capped by the capacity factor; and the shipped MoE and
long-context scenarios showing their all-to-all and context-parallel traffic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.build.program_builder import ProgramFactory
from simulator.build.setup import Setup
from simulator.models.spec import ModelSpec, MoESpec
from simulator.network.models.base import CollectiveRequest
from simulator.parallel.strategies.expert import expert_load_factor, expert_loads
from simulator.scenario import ExpertLoadConfig, load_scenario
from simulator.simulate import simulate
from simulator.topology.loader import build_cluster
from simulator.workload.ops import Collective, CollectiveKind, CommKind

ROOT = Path(__file__).resolve().parent.parent
MOE = {
    "layers": 4, "hidden": 1024, "heads": 16, "kv_heads": 4, "ffn_hidden": 2048, "vocab": 4096,
    "gated_mlp": True, "linear_bias": False, "moe": {"experts": 8, "top_k": 2},
}  # fmt: skip


def setup_of(make_scenario, **kw) -> Setup:
    scenario = make_scenario(**kw)
    return Setup(scenario, build_cluster(scenario.topology, file="<test>"), "symmetric")


def collectives(setup: Setup, comm: CommKind) -> list[Collective]:
    prog = ProgramFactory(setup.workload, setup.inline_comm).build(0)
    return [op for op in prog.ops if isinstance(op, Collective) and op.comm is comm]


# ----------------------------------------------------------------------------------------- all-to-alls
@pytest.mark.parametrize("ep", [2, 4, 8])
@pytest.mark.parametrize("recompute", ["none", "full"])
def test_all_to_all_bytes_match_reference(make_scenario, ep, recompute):
    """Per MoE layer and micro-batch: dispatch and combine forward, both again backward (and again in the
    recomputed forward), each a buffer of T·k·h·bytes; the network sends (ep−1)/ep of it off each rank.
    Beside each dispatch, the fp32 routing probabilities (T·k·4 bytes); before each forward dispatch, the
    all-gather of the int64 tokens-per-expert counts (Megatron-Core's dropless all-to-all dispatcher)."""
    m, seq = 2, 1024
    s = setup_of(make_scenario, gpus_per_host=8, model=MOE, micro_batches=m, seq_len=seq,
                 parallelism__ep=ep, training__recompute=recompute)  # fmt: skip
    ep_ops = collectives(s, CommKind.EP)
    ops = [op for op in ep_ops if op.kind is CollectiveKind.ALL_TO_ALL and "probs" not in op.name]
    forwards = 1 + (1 if recompute == "full" else 0)
    per_layer = 2 * forwards + 2
    assert len(ops) == per_layer * MOE["layers"] * m
    buffer = seq * 2 * MOE["hidden"] * 2  # T·k·h·bytes, bf16
    assert {op.bytes for op in ops} == {buffer}
    probs = [op for op in ep_ops if "probs" in op.name]
    assert len(probs) == (forwards + 1) * MOE["layers"] * m and {op.bytes for op in probs} == {seq * 2 * 4}
    counts = [op for op in ep_ops if op.kind is CollectiveKind.ALL_GATHER]
    assert len(counts) == forwards * MOE["layers"] * m and {op.bytes for op in counts} == {8 * 8 * ep}
    assert {op.group for op in ops} == {"ep"}
    group = s.plan.groups("ep")[:1]
    req = CollectiveRequest(CollectiveKind.ALL_TO_ALL, group, buffer, ("ep-test",))
    node = s.cluster.gpu_node_index[int(group[0, 0])]
    sent = sum(float(r.phase.bytes[r.phase.src == node].sum()) for r in s.phase_cache.routed(req))
    assert sent == pytest.approx(buffer * (ep - 1) / ep, rel=1e-12)


def test_no_expert_parallelism_no_all_to_all(make_scenario):
    """ep = 1: every expert is local; no all-to-all, no EP time."""
    rep = simulate(make_scenario(gpus_per_host=4, model=MOE, micro_batches=2)).report
    assert rep.comm.ep_s == 0.0
    rep = simulate(make_scenario(gpus_per_host=4, model=MOE, micro_batches=2, parallelism__ep=4)).report
    assert rep.comm.ep_s > 0.0


# ----------------------------------------------------------------------------------- sharded experts
def test_expert_weights_shard_and_reduce_over_their_groups(make_scenario):
    """16 GPUs, ep 8: each rank holds 1/8 of the routed experts; ZeRO-1 reduce-scatters dense gradients
    over the 16 data-parallel ranks and expert gradients over the 2 ranks holding the same experts."""
    s = setup_of(make_scenario, gpus_per_host=8, nodes=2, model=MOE, micro_batches=2, parallelism__ep=8)
    w, p = s.workload, s.workload.params
    dense, expert = w.layer_param_split(0)
    assert expert == pytest.approx(p.routed_experts_per_layer / 8)
    assert dense == pytest.approx(p.moe_layer - p.routed_experts_per_layer)
    ops = collectives(s, CommKind.DP)

    def total(group: str, kind: CollectiveKind) -> float:
        return sum(op.bytes for op in ops if op.group == group and op.kind is kind)

    rs, ag = CollectiveKind.REDUCE_SCATTER, CollectiveKind.ALL_GATHER
    d_total, e_total = w.chunk_param_split(0)
    assert e_total == pytest.approx(expert * MOE["layers"])
    # gradients in fp32 (Megatron with bf16), updated parameters gathered in bf16
    assert total("edp", rs) == pytest.approx(4 * e_total)
    assert total("edp", ag) == pytest.approx(2 * e_total)
    assert total("dp", rs) == pytest.approx(4 * d_total)
    assert total("dp", ag) == pytest.approx(2 * d_total)
    assert s.plan.groups("edp").shape[1] == 2


def test_expert_parallelism_shrinks_weights(make_scenario):
    """Weight memory falls as experts spread over more ranks."""
    mem = [
        simulate(make_scenario(gpus_per_host=8, model=MOE, parallelism__ep=ep)).report.memory_gib_per_gpu
        for ep in (1, 2, 8)
    ]
    assert mem[0].weights > mem[1].weights > mem[2].weights


# -------------------------------------------------------------------------------------- load imbalance
def model_of(experts: int, top_k: int, capacity: float | None = None) -> ModelSpec:
    moe = MoESpec(experts=experts, top_k=top_k, capacity_factor=capacity)
    return ModelSpec("t", 2, 64, 4, 4, 128, 100, moe=moe)


def test_zipf_load_by_hand():
    """E = 4, k = 1, skew 1: loads ∝ 1, 1/2, 1/3, 1/4 (sum 25/12), the top expert gets 48/25 of the mean;
    ep = 2 puts the two most popular on rank 0: (48 + 24)/25/2 = 1.44; a capacity factor of 1.25 caps
    the top expert: (1.25 + 0.96)/2 = 1.105."""
    zipf = ExpertLoadConfig(distribution="zipf", skew=1.0)
    assert expert_loads(4, 1, zipf) == pytest.approx([48 / 25, 24 / 25, 16 / 25, 12 / 25])
    assert expert_load_factor(model_of(4, 1), zipf, 2) == pytest.approx(1.44)
    assert expert_load_factor(model_of(4, 1, 1.25), zipf, 2) == pytest.approx(1.105)
    assert expert_load_factor(model_of(4, 1), zipf, 1) == pytest.approx(1.0)
    assert expert_load_factor(model_of(4, 1), ExpertLoadConfig(), 4) == 1.0


@settings(max_examples=60, deadline=None)
@given(
    e_log=st.integers(0, 6), k=st.integers(1, 8), skew=st.floats(0.0, 3.0),
    ep_log=st.integers(0, 6), capacity=st.one_of(st.none(), st.floats(1.0, 4.0)),
)  # fmt: skip
def test_load_factor_invariants(e_log, k, skew, ep_log, capacity):
    """Loads average 1 and no expert gets more than every token (E/k); the most loaded rank carries at
    least the mean (without dropping), at most its capacity, and more as the skew grows."""
    experts = 2**e_log
    k, ep = min(k, experts), 2 ** min(ep_log, e_log)
    zipf = ExpertLoadConfig(distribution="zipf", skew=skew)
    loads = expert_loads(experts, k, zipf)
    assert loads.mean() == pytest.approx(1.0)
    assert np.all(loads <= experts / k + 1e-9)
    f = expert_load_factor(model_of(experts, k, capacity), zipf, ep)
    if capacity is None:
        assert f >= 1.0 - 1e-12
        steeper = expert_load_factor(
            model_of(experts, k), ExpertLoadConfig(distribution="zipf", skew=skew + 0.5), ep
        )
        assert steeper >= f - 1e-12
    else:
        assert f <= capacity + 1e-12


def test_skew_slows_the_step_and_capacity_caps_it(make_scenario):
    """The most loaded rank's expert GEMMs and all-to-alls grow with the skew; a capacity factor drops the
    excess tokens."""
    common = dict(gpus_per_host=8, model=MOE, micro_batches=2, parallelism__ep=8)
    skewed = {"distribution": "zipf", "skew": 1.2}
    uniform = simulate(make_scenario(**common)).report
    zipf = simulate(make_scenario(**common, training__expert_load=skewed)).report
    capped_model = dict(MOE, moe=dict(MOE["moe"], capacity_factor=1.25))
    capped = simulate(make_scenario(**dict(common, model=capped_model), training__expert_load=skewed)).report
    assert zipf.step_time_s > capped.step_time_s > uniform.step_time_s
    assert zipf.comm.ep_s > capped.comm.ep_s > uniform.comm.ep_s
    assert uniform.mfu == pytest.approx(uniform.model_tflops_per_gpu * 1e12 / 312e12)


# ------------------------------------------------------------------------------------ shipped scenarios
@pytest.mark.parametrize(
    "path,kind",
    [
        ("scenarios/moe/mixtral-8x7b-ep8-64xh100.yaml", "ep"),
        ("scenarios/moe/deepseek-v3-like-pp16-ep64-2048xh100.yaml", "ep"),
        ("scenarios/long-context/llama3-405b-cp16-128k-16384xh100.yaml", "cp"),
    ],
)
def test_shipped_scenarios_show_their_traffic(path, kind):
    """Each fits in memory and shows its all-to-all or context-parallel time (its wall time is measured by
    benchmarks/bench_speed.py, not asserted here: a unit test must not depend on the machine's speed)."""
    rep = simulate(load_scenario(ROOT / path)).report
    assert getattr(rep.comm, f"{kind}_s") > 0
    assert rep.fits_memory, rep.warnings
    assert 0.05 < rep.mfu < 0.6
