"""The MFU/HFU convention of ``simulator.models.flops`` against hand-computed counts: GQA's smaller K/V
projections, SwiGLU's three matrices, MoE's active experts, causal attention halved, biases and norms not
counted; Narayanan et al.'s closed form for GPT; and HFU/MFU = 4/3 under full recomputation."""

from __future__ import annotations

import pytest

from simulator.models.flops import (
    matmul_params_per_token,
    model_flops_per_token,
    narayanan_flops_per_iteration,
)
from simulator.models.spec import ModelSpec, MoESpec
from simulator.simulate import simulate


def test_gqa_swiglu_by_hand():
    """2 layers, h 64, 8 heads of 8, 2 KV heads, SwiGLU ffn 128, vocab 100, no biases:
    attention 64·64 + 2·64·16 + 64·64 = 10,240; MLP 3·64·128 = 24,576; output 6,400;
    N = 2·34,816 + 6,400 = 76,032; per token 6N + 12·L·s·(heads·d)/2 = 456,192 + 768·s."""
    spec = ModelSpec("t", 2, 64, 8, 2, 128, 100, gated_mlp=True, linear_bias=False)
    assert matmul_params_per_token(spec) == 76_032
    assert model_flops_per_token(spec, 32) == 456_192 + 768 * 32
    assert model_flops_per_token(spec, 32, causal=False) == 456_192 + 2 * 768 * 32


def test_biases_and_norms_do_not_count():
    """GPT-style layer with biases and LayerNorms: only the 4h² attention and 8h² MLP matrices count."""
    spec = ModelSpec("t", 1, 64, 4, 4, 256, 100, linear_bias=True)
    assert matmul_params_per_token(spec) == 4 * 64 * 64 + 2 * 64 * 256 + 100 * 64


def test_moe_counts_active_experts_by_hand():
    """Layer 0 dense (34,816 as above), layer 1 MoE with 4 experts of width 32, top-2 and 1 shared expert:
    attention 10,240 + (2 + 1)·3·64·32 + router 64·4 = 28,928; output 6,400: 70,144 active matrix weights,
    whatever the number of routed experts."""
    moe = MoESpec(experts=4, top_k=2, shared_experts=1, expert_ffn_hidden=32, first_dense_layers=1)
    spec = ModelSpec("t", 2, 64, 8, 2, 128, 100, gated_mlp=True, linear_bias=False, moe=moe)
    assert matmul_params_per_token(spec) == 70_144
    more = ModelSpec("t", 2, 64, 8, 2, 128, 100, gated_mlp=True, linear_bias=False,
                     moe=MoESpec(experts=64, top_k=2, shared_experts=1, expert_ffn_hidden=32, first_dense_layers=1))  # fmt: skip
    assert matmul_params_per_token(more) == 70_144 + 64 * 60  # only the router grows


@pytest.mark.parametrize(
    "layers,h,s,v", [(24, 2048, 2048, 51200), (96, 12288, 2048, 51200), (2, 64, 16, 100)]
)
def test_gpt_matches_narayanan_without_recompute(layers, h, s, v):
    """A bias-free GPT with 4h FFN and non-causal attention: exactly Narayanan et al.'s
    72·B·s·l·h²·(1 + s/(6h) + V/(12·l·h)) per iteration."""
    spec = ModelSpec("t", layers, h, 16, 16, 4 * h, v, linear_bias=False)
    b = 8
    ours = model_flops_per_token(spec, s, causal=False) * b * s
    assert ours == pytest.approx(narayanan_flops_per_iteration(spec, b, s, full_recompute=False), rel=1e-12)


def test_hfu_over_mfu_is_four_thirds_under_full_recompute(make_scenario):
    """Full recomputation runs the forward twice: hardware FLOPs 8N vs model 6N per token for the layers
    (the output layer is not recomputed); without recomputation HFU = MFU up to flash attention's extra
    backward GEMM."""
    model = {"layers": 8, "hidden": 4096, "heads": 32, "vocab": 256, "linear_bias": False}
    full = simulate(make_scenario(gpus_per_host=1, model=model, seq_len=512, training__recompute="full"))
    none = simulate(make_scenario(gpus_per_host=1, model=model, seq_len=512))
    assert full.report.mfu < none.report.mfu
    assert none.report.hfu / none.report.mfu == pytest.approx(1.0, abs=0.01)
    assert full.report.hfu / full.report.mfu == pytest.approx(4 / 3, rel=0.01)
