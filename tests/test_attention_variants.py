"""Multi-head latent attention, sliding-window attention, attention sinks and multi-token prediction (issue #8)
as mechanisms: parameter totals against the published ones, the layer builder's FLOPs against closed forms,
and models without these fields unchanged.

Published figures: DeepSeek-V3 671B parameters, 37B activated (DeepSeek-AI 2024, arXiv 2412.19437, Sec. 4.2
and Table 1), 36.6B activated without the embedding and 11.5B own parameters of the MTP module
(deepseek-ai/DeepSeek-V3 README_WEIGHTS.md), 685B in the Hugging Face checkpoint (its README: "671B of the
Main Model weights and 14B of the Multi-Token Prediction (MTP) Module weights"); gpt-oss-120b 116.83B
total, 5.13B active, 0.96B attention, 114.71B MLP (OpenAI, gpt-oss-120b & gpt-oss-20b model card, Aug 2025,
Table 1).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from simulator.build.memory import layer_activation_bytes
from simulator.build.program_builder import ProgramFactory
from simulator.build.setup import Setup
from simulator.models.catalog import model_catalog
from simulator.models.flops import model_flops_per_token
from simulator.models.params import parameter_count
from simulator.scenario import ModelConfig, load_scenario, scenario_from_dict
from simulator.simulate import simulate
from simulator.topology.loader import build_cluster
from simulator.workload.steps import KernelStep

ROOT = Path(__file__).resolve().parents[1]
B200 = ROOT / "scenarios/validation/modern/megatron-bridge-25.11-b200"

# DeepSeek-V3 (config_671B.json) at 4 layers: 1 dense, 3 MoE of 16 experts, one MTP module
MLA = {"q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}
SMALL_DSV3: dict[str, Any] = {
    "layers": 4, "hidden": 7168, "heads": 128, "ffn_hidden": 18432, "vocab": 129280, "gated_mlp": True,
    "linear_bias": False, "mla": MLA, "mtp_layers": 1,
    "moe": {"experts": 16, "top_k": 2, "shared_experts": 1, "expert_ffn_hidden": 2048, "first_dense_layers": 1},
}  # fmt: skip
# gpt-oss-120b's attention (64 heads of 64, 8 KV heads, window 128 on even layers, sinks), dense and small
WINDOWED: dict[str, Any] = {
    "layers": 2, "hidden": 2880, "heads": 64, "kv_heads": 8, "head_dim": 64, "ffn_hidden": 2880,
    "vocab": 1024, "gated_mlp": True, "sliding_window": {"size": 128, "every": 2, "first": 0},
    "attention_sinks": True,
}  # fmt: skip


def _setup(doc: dict[str, Any]) -> Setup:
    sc = scenario_from_dict(doc)
    return Setup(sc, build_cluster(sc.topology, file="<test>"), "symmetric")


def _kernels(steps: list[Any]) -> dict[str, KernelStep]:
    return {s.name: s for s in steps if isinstance(s, KernelStep)}


# ------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("source", ["scenario", "catalog"])
def test_deepseek_v3_parameters_match_the_published_totals(source: str) -> None:
    """MLA's 187.1M attention weights per layer bring the count to the published 671B / 37B; the MTP
    module adds its own 11.5B (one MoE layer, eh_proj, norms) and its checkpoint copies of the shared
    embedding and head make the 685B on Hugging Face."""
    if source == "scenario":
        spec = load_scenario(B200 / "dsv3-mtp-256.yaml").model
    else:
        spec = ModelConfig(**{"name": "deepseek-v3", **model_catalog()["deepseek-v3"]}).to_spec()
    pc = parameter_count(spec)
    assert pc.total == pytest.approx(671e9, rel=1e-3)
    assert pc.active_without_embedding == pytest.approx(36.6e9, rel=2e-3)
    assert round(pc.active_without_embedding / 1e9) == 37  # the paper's "37B activated"
    assert pc.mtp == pytest.approx(11.5e9, rel=1.5e-2)
    assert pc.checkpoint_total == pytest.approx(685e9, rel=1e-3)
    assert pc.total_with_mtp - pc.total == pc.mtp


def test_gpt_oss_120b_parameters_match_the_model_card() -> None:
    """GQA attention with biases and sinks, 128 experts of width 2,880 (top-4), untied 201,088-token vocab."""
    spec = load_scenario(B200 / "gptoss-120b-64.yaml").model
    pc = parameter_count(spec)
    assert pc.total == pytest.approx(116.83e9, rel=1e-3)
    assert pc.active_without_embedding == pytest.approx(5.13e9, rel=1e-3)
    assert spec.layers * pc.attention_per_layer == pytest.approx(0.96e9, rel=5e-3)
    assert spec.layers * pc.moe_mlp_per_layer == pytest.approx(114.71e9, rel=1e-3)
    # the sinks: one learned logit per head and layer
    assert pc.attention_per_layer - parameter_count(replace(spec, attention_sinks=False)).attention_per_layer == 64


# ------------------------------------------------------------------------------------------- MLA kernels
@pytest.mark.parametrize("tp", [1, 2])
def test_mla_projection_flops_per_token_follow_the_formula(make_doc, tp: int) -> None:  # type: ignore[no-untyped-def]
    """Per token 2·(h·q_lora + q_lora·H·192 + h·(kv_lora + 64) + kv_lora·H·256 + H·128·h) FLOPs, the
    up-projections and the output split over TP by heads, the down-projections replicated on every rank."""
    st = _setup(make_doc(gpus_per_host=8, model=SMALL_DSV3, tp=tp, seq_len=512, parallelism__ep=8 // tp))
    lb = st.workload.layer_builder
    k = _kernels(lb.attention_block_forward())
    h, heads = 7168, 128
    down = h * 1536 + h * (512 + 64)
    split = 1536 * heads * 192 + 512 * heads * 256 + heads * 128 * h
    names = ("q_down", "q_up", "kv_down", "kv_up", "attn_proj")
    per_token = sum(k[n].model_flops for n in names) / st.ctx.tokens
    assert per_token == pytest.approx(2 * (down + split / tp))
    assert "qkv" not in k
    # core attention: QKᵀ at 192, AV at 128 per head, causal half, this rank's heads
    s = 512
    assert k["flash_attn"].model_flops == pytest.approx(2 * (heads / tp) * s * s / 2 * (192 + 128))
    # backward: every forward GEMM has its input- and weight-gradient GEMM of the same FLOPs
    bk = _kernels(lb.attention_block_backward())
    for n in names:
        assert bk[f"{n}_dgrad"].model_flops == bk[f"{n}_wgrad"].model_flops == pytest.approx(k[n].model_flops)


def test_mla_model_flops_and_activations(make_doc) -> None:  # type: ignore[no-untyped-def]
    """MFU's model FLOPs use MLA's projections and head dims; the activations keep the compressed q and kv
    twice and Q, K (192 per head), V (128) unless ``mla_up_proj`` recomputes them."""
    spec = ModelConfig(**SMALL_DSV3).to_spec()
    plain = replace(spec, mtp_layers=0)
    pc = parameter_count(plain)
    s = 4096
    mla = 7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168
    ffn_dense = 3 * 7168 * 18432
    ffn_moe = (2 + 1) * 3 * 7168 * 2048 + 7168 * 16
    matrices = 4 * mla + ffn_dense + 3 * ffn_moe + 129280 * 7168
    core = 6 * 128 * (192 + 128) * s / 2 * 4
    assert model_flops_per_token(plain, s) == pytest.approx(6 * matrices + core)
    assert pc.attention_per_layer == mla + 1536 + 512
    doc = make_doc(gpus_per_host=8, model=SMALL_DSV3, seq_len=512, parallelism__ep=8)
    base = _setup(doc)
    doc["training"].update(recompute="selective", recompute_modules=["mla_up_proj"])
    again = _setup(doc)
    t = base.ctx.tokens
    freed = 2.0 * t * 128 * (192 + 192 + 128)  # Q, K, V in 16-bit
    assert layer_activation_bytes(base.ctx, True) - layer_activation_bytes(again.ctx, True) == pytest.approx(freed)
    re = again.workload.layer_builder.recompute("selective", moe=True)
    assert [s.name for s in re] == ["re.q_up", "re.kv_up", "re.rotary"]
    assert base.workload.layer_builder.recompute(base.ctx.training.recompute, moe=True) == []


# ------------------------------------------------------------------------------------------- sliding window
def test_windowed_layer_attention_flops_are_the_band(make_doc) -> None:  # type: ignore[no-untyped-def]
    """A causal layer with a window of w ≪ s keys does ≈ 4·b·H·s·w·d forward FLOPs (exactly
    4·b·H·d·(w·s − w(w − 1)/2)); the full layer beside it the causal half 2·b·H·s²·d; and the fused kernel
    runs the band faster than the full prefix, though below its peak rate."""
    s, w, b, heads, d = 16384, 128, 1, 64, 64
    st = _setup(make_doc(gpus_per_host=8, model=WINDOWED, seq_len=s, micro_batch=b))
    windowed = _kernels(st.workload.layer_builder_for(0).attention_core_forward())["flash_attn"]
    full = _kernels(st.workload.layer_builder_for(1).attention_core_forward())["flash_attn"]
    assert windowed.model_flops == pytest.approx(4 * b * heads * s * w * d, rel=w / s)
    assert windowed.model_flops == pytest.approx(4 * b * heads * d * (w * s - w * (w - 1) / 2))
    assert full.model_flops == pytest.approx(2 * b * heads * s * s * d)
    # faster than the full prefix, though not by the FLOPs ratio: each query tile still pays its fixed cost
    # and the band's edge tiles (hardware/attention.py)
    assert full.time.duration_s * windowed.model_flops / full.model_flops < windowed.time.duration_s
    assert windowed.time.duration_s < full.time.duration_s / 4
    # model FLOPs per token: one windowed and one full layer
    spec = st.ctx.model
    assert model_flops_per_token(spec, s) - model_flops_per_token(replace(spec, sliding_window=None), s) == (
        pytest.approx(6 * heads * 2 * d * ((w * s - w * (w - 1) / 2) / s - s / 2))
    )


def test_window_pattern_follows_every_and_first() -> None:
    spec = ModelConfig(**{**WINDOWED, "layers": 6, "sliding_window": {"size": 64, "every": 3, "first": 1}}).to_spec()
    assert [spec.attention_window(i) for i in range(6)] == [None, 64, None, None, 64, None]


# ------------------------------------------------------------------------------------------- MTP
def test_mtp_module_runs_on_the_last_stage(make_doc) -> None:  # type: ignore[no-untyped-def]
    """The MTP module (eh_proj, one MoE layer, the shared head and its loss) runs after the decoder on the
    last pipeline stage, holds its parameters and a copy of the embedding there, costs time and memory, and
    adds its FLOPs to the model's."""
    doc = make_doc(gpus_per_host=8, model=SMALL_DSV3, pp=2, seq_len=512, micro_batches=4, parallelism__ep=4)
    with_mtp = _setup(doc)
    w = with_mtp.workload
    programs = ProgramFactory(w, with_mtp.inline_comm)
    units = [u.name for u in programs.units(1)]
    assert units[-2:] == ["mtp0", "head"] and "mtp0" not in [u.name for u in programs.units(0)]
    pc = w.params
    mtp_dense, mtp_expert = w.layer_param_split(4)
    # tp = 1: all its dense weights and the embedding copy; its routed experts split over ep = 4
    assert mtp_dense == pytest.approx(pc.mtp_per_module - pc.routed_experts_per_layer + pc.embedding)
    assert mtp_expert == pytest.approx(pc.routed_experts_per_layer / 4)
    fwd = [n for st in programs.forward_steps(1) for n in getattr(st, "names", ())]
    assert {"mtp0_eh_proj", "mtp0_logits", "mtp0_cross_entropy", "mtp0_embedding"} <= set(fwd)
    assert fwd.index("mtp0_eh_proj") < fwd.index("mtp0_logits") < fwd.index("logits")
    doc0 = make_doc(gpus_per_host=8, model={**SMALL_DSV3, "mtp_layers": 0}, pp=2, seq_len=512, micro_batches=4,
                    parallelism__ep=4)  # fmt: skip
    a, b = simulate(scenario_from_dict(doc)).report, simulate(scenario_from_dict(doc0)).report
    assert a.step_time_s > b.step_time_s
    assert a.memory_gib_per_gpu.total > b.memory_gib_per_gpu.total
    spec = with_mtp.ctx.model
    h, v = 7168, 129280
    mla = 7168 * 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 * 128 * 256 + 128 * 128 * 7168
    layer = mla + (2 + 1) * 3 * 7168 * 2048 + 7168 * 16
    extra = 6 * (2 * h * h + layer + v * h) + 6 * 128 * 320 * 512 / 2
    assert model_flops_per_token(spec, 512) - model_flops_per_token(replace(spec, mtp_layers=0), 512) == (
        pytest.approx(extra)
    )


# ------------------------------------------------------------------------------------------- unchanged
def test_models_without_the_fields_are_unchanged() -> None:
    """A shipped dense scenario steps the same with a window as long as the sequence as without one, and
    with sinks only by their 32 parameters per layer (the optimizer's and gradients' share; their logit is not
    timed). That the step is the same as before this mechanism existed is checked by running the shipped
    scenarios at both commits (the report of issue #8), not here."""
    path = ROOT / "scenarios/validation/modern/megatron-bridge-25.11-b200/llama3-8b-8.yaml"
    base = load_scenario(path)
    ref = simulate(base).report
    window = simulate(load_scenario(path, [f"model.sliding_window.size={base.training.seq_len}"])).report
    assert window.step_time_s == ref.step_time_s
    assert window.memory_gib_per_gpu.total == ref.memory_gib_per_gpu.total
    sinks = simulate(load_scenario(path, ["model.attention_sinks=true"])).report
    assert sinks.step_time_s == pytest.approx(ref.step_time_s, rel=1e-6)
    assert sinks.step_time_s >= ref.step_time_s
