"""Memory per GPU against the formulas of docs/reference.md: model state per ZeRO stage (Rajbhandari et al. 2020;
Megatron's fp32 gradients), activations per layer (Korthikanti et al. 2022, Sec. 4), micro-batches in flight
per schedule, ZeRO-3's gathered layers, expert sharding, and a GPT-3 175B run that cannot fit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.build.memory import (
    FRAMEWORK_RESERVE_BYTES,
    RankParams,
    layer_activation_bytes,
    memory_per_gpu,
)
from simulator.build.setup import DATA_STRATEGY, Setup
from simulator.parallel.strategies.base import BuildContext, DataStrategy
from simulator.registry import SCHEDULES, STRATEGIES
from simulator.simulate import simulate
from simulator.topology.loader import build_cluster
from simulator.units import GiB

# ffn 4h, MHA, GeLU and Megatron-LM's default 0.1 dropout: Korthikanti's shape and training
GPT = {"layers": 8, "hidden": 1024, "heads": 16, "vocab": 1024, "hidden_dropout": 0.1, "attention_dropout": 0.1}


def ctx_of(make_scenario, **kw) -> BuildContext:
    """The build context of a scenario made by ``make_scenario(**kw)``."""
    scenario = make_scenario(**kw)
    return Setup(scenario, build_cluster(scenario.topology, file="<test>"), "symmetric").ctx


def _data(zero: int) -> DataStrategy:
    """The registered data strategy of ZeRO stage ``zero``."""
    strategy = STRATEGIES.get(DATA_STRATEGY[zero])()
    assert isinstance(strategy, DataStrategy)
    return strategy


_RING = STRATEGIES.get("context_ring")()  # no K/V gathered: what the model-state tests need


# ------------------------------------------------------------------------------------------ model state
@settings(max_examples=25, deadline=None)
@given(d=st.sampled_from([1, 2, 4, 8]), params=st.floats(1e3, 1e11))
def test_zero_stages_match_the_zero_paper_in_fp16(make_scenario, d, params):
    """fp16 mixed precision: 16 bytes per parameter replicated; ZeRO-1 4 + 12/d, ZeRO-2 2 + 14/d,
    ZeRO-3 16/d (Rajbhandari et al. 2020, Fig. 1)."""
    expected = {0: 16.0, 1: 4 + 12 / d, 2: 2 + 14 / d, 3: 16 / d}
    for zero, per_param in expected.items():
        ctx = ctx_of(make_scenario, gpus_per_host=d, model=GPT, zero=zero, training__precision="fp16")
        assert sum(_data(zero).state_bytes(ctx, params, d)) == pytest.approx(per_param * params, rel=1e-12)


@pytest.mark.parametrize("d", [1, 8, 64])
def test_megatron_bf16_keeps_fp32_gradients(make_scenario, d):
    """bf16 with Megatron's fp32 main gradients: 18 bytes per parameter, 6 + 12/d with the distributed
    optimizer (ZeRO-1); ZeRO-3 reduces in bf16 (FSDP), back to 16/d."""
    ctx = ctx_of(make_scenario, gpus_per_host=8, model=GPT, zero=0)
    assert sum(_data(0).state_bytes(ctx, 1e9, d)) == pytest.approx(18e9)
    ctx = ctx_of(make_scenario, gpus_per_host=8, model=GPT, zero=1)
    assert sum(_data(1).state_bytes(ctx, 1e9, d)) == pytest.approx((6 + 12 / d) * 1e9)
    ctx = ctx_of(make_scenario, gpus_per_host=8, model=GPT, zero=3)
    assert sum(_data(3).state_bytes(ctx, 1e9, d)) == pytest.approx(16 / d * 1e9)


def test_zero3_holds_two_gathered_layers(make_scenario):
    """ZeRO-3 adds the layer in use and the prefetched one (16-bit weights and gradients), one without
    prefetch; the DDP buckets go away."""
    rank = RankParams(dense=8e9, dense_shard=8, largest_unit=1e9)
    for overlap, live in ((True, 2), (False, 1)):
        ctx = ctx_of(
            make_scenario, gpus_per_host=8, model=GPT, zero=3, parallelism__param_gather_overlap=overlap
        )
        mem = memory_per_gpu(ctx, _data(3), _RING, rank, [], 0.0, False, False)
        assert mem.weights == pytest.approx(8e9 * 2 / 8 + live * 1e9 * 2)
        assert mem.grads == pytest.approx(8e9 * 2 / 8 + live * 1e9 * 2)
        assert mem.optimizer == pytest.approx(8e9 * 12 / 8)
        assert mem.other == FRAMEWORK_RESERVE_BYTES


def test_expert_state_shards_over_its_own_group(make_scenario):
    """Expert parameters are sharded by ZeRO over the expert-data-parallel group, dense ones over dp."""
    ctx = ctx_of(make_scenario, gpus_per_host=8, model=GPT, zero=1, training__precision="fp16")
    mem = memory_per_gpu(ctx, _data(1), _RING, RankParams(1e9, 8, 4e9, 2), [], 0.0, False, False)
    assert mem.weights == pytest.approx(2 * 5e9)
    assert mem.optimizer == pytest.approx(12 * (1e9 / 8 + 4e9 / 2))


# ------------------------------------------------------------------------------------------ activations
@pytest.mark.parametrize("t", [1, 2, 4, 8])
@pytest.mark.parametrize("b", [1, 2])
def test_activations_match_korthikanti(make_scenario, t, b):
    """Per layer, 16-bit, s·b tokens, h hidden, a heads, t TP ranks (Korthikanti et al. 2022, Table 2):
    TP s·b·h·(10 + 24/t + 5·a·s/(h·t)) (t = 1: 34 + 5·a·s/h); TP+SP (s·b·h/t)·(34 + 5·a·s/h);
    TP+SP+selective 34·s·b·h/t; full recompute 2·s·b·h."""
    s, h, a = 2048, GPT["hidden"], GPT["heads"]
    sbh = s * b * h
    base = dict(gpus_per_host=8, model=GPT, tp=t, seq_len=s, micro_batch=b, training__flash_attention=False)
    cases = {
        ("none", False): sbh * (10 + 24 / t + 5 * a * s / (h * t)),
        ("none", True): sbh / t * (34 + 5 * a * s / h),
        ("selective", True): 34 * sbh / t,
        ("full", False): 2 * sbh,
        ("full", True): 2 * sbh / t,
    }
    for (recompute, sp), expected in cases.items():
        ctx = ctx_of(make_scenario, **base, training__recompute=recompute, parallelism__sequence_parallel=sp)
        assert layer_activation_bytes(ctx, False) == pytest.approx(expected, rel=1e-12), (recompute, sp)


@pytest.mark.parametrize("t", [1, 4])
def test_no_dropout_keeps_no_masks(make_scenario, t):
    """Trained without dropout (Llama, DeepSeek, MPT), a layer keeps neither the two 1-byte hidden-dropout masks
    (2·s·b·h, 1/t with SP) nor the attention dropout's mask and output (3·a·s²·b/t): TP+SP keeps
    (s·b·h/t)·(32 + 2·a·s/h), TP alone s·b·h·(8 + 24/t + 2·a·s/(h·t))."""
    s, h, a = 2048, GPT["hidden"], GPT["heads"]
    sbh = s * h
    plain = {**GPT, "hidden_dropout": 0.0, "attention_dropout": 0.0}
    base = dict(gpus_per_host=8, model=plain, tp=t, seq_len=s, training__flash_attention=False)
    sp = ctx_of(make_scenario, **base, parallelism__sequence_parallel=True)
    assert layer_activation_bytes(sp, False) == pytest.approx(sbh / t * (32 + 2 * a * s / h), rel=1e-12)
    tp = ctx_of(make_scenario, **base, parallelism__sequence_parallel=False)
    assert layer_activation_bytes(tp, False) == pytest.approx(sbh * (8 + 24 / t + 2 * a * s / (h * t)), rel=1e-12)


def test_flash_attention_keeps_softmax_statistics_only(make_scenario):
    """Flash attention drops the 5·a·s²·b/t score term for fp32 log-sum-exp statistics (4·a·s·b/t bytes)."""
    s, h, a, t = 2048, GPT["hidden"], GPT["heads"], 4
    ctx = ctx_of(
        make_scenario, gpus_per_host=8, model=GPT, tp=t, seq_len=s, parallelism__sequence_parallel=True
    )
    assert layer_activation_bytes(ctx, False) == pytest.approx(34 * s * h / t + 4 * a * s / t)


def test_context_parallelism_divides_activations(make_scenario):
    """cp ranks each keep s/cp of the tokens."""
    one = ctx_of(make_scenario, gpus_per_host=4, model=GPT, seq_len=4096)
    four = ctx_of(make_scenario, gpus_per_host=4, model=GPT, seq_len=4096, parallelism__cp=4)
    assert layer_activation_bytes(four, False) == pytest.approx(layer_activation_bytes(one, False) / 4)


@pytest.mark.parametrize("p,m", [(2, 4), (4, 4), (4, 8), (8, 16)])
def test_micro_batches_in_flight_by_schedule(p, m):
    """First stage: 1F1B p, GPipe m, interleaved p + (p−1)/v (Korthikanti Sec. 4.2.3; all m when m = p,
    where Megatron runs every forward first), ZB-H1 p on every stage."""
    v = 2
    assert SCHEDULES.get("1f1b")().in_flight(0, p, m, 1) == min(p, m)
    assert SCHEDULES.get("gpipe")().in_flight(0, p, m, 1) == m
    interleaved = p + (p - 1) / v if m > p else m
    assert SCHEDULES.get("interleaved")().in_flight(0, p, m, v) == pytest.approx(interleaved)
    zb = SCHEDULES.get("zero-bubble")()
    assert [zb.in_flight(s, p, m, 1) for s in range(p)] == [min(p, m)] * p


# --------------------------------------------------------------------------------------- fits or not
def test_gpt3_175b_with_data_parallelism_only_does_not_fit(make_scenario):
    """GPT-3 175B, tp = pp = 1 on 64 A100 80GB: 175B × (6 + 12/64) bytes of model state per GPU; the report
    says it does not fit and names the largest term (Megatron's fp32 gradients, 700 GB)."""
    scenario = make_scenario(gpus_per_host=8, nodes=8, model="gpt3-175b", seq_len=2048, micro_batches=1)
    rep = simulate(scenario).report
    assert not rep.fits_memory
    assert rep.memory_gib_per_gpu.total > 80e9 / GiB
    assert rep.memory_gib_per_gpu.grads == pytest.approx(175e9 * 4 / GiB, rel=0.01)
    assert any("does not fit" in w and "largest term: grads" in w for w in rep.warnings)


def test_small_model_fits(make_scenario):
    """The tiny model fits, with no warning about memory."""
    rep = simulate(make_scenario(gpus_per_host=2, micro_batches=2)).report
    assert rep.fits_memory
    assert not any("does not fit" in w for w in rep.warnings)
