"""Kernel models against the published kernel measurements they came from (issue #8), and the physical bounds
every kernel keeps: no kernel faster than the GPU's dense peak FLOP/s or its HBM bandwidth."""

from __future__ import annotations

from dataclasses import replace
from importlib import resources

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.calibrate.attention import fitted
from simulator.frameworks.profile import framework_profile, profile_for, profile_names
from simulator.hardware.attention import attention_kernel
from simulator.hardware.calibration import compute_calibration
from simulator.hardware.compute import ComputeModel, fp8_gemm_ratio
from simulator.hardware.gpu import get_gpu

H100_BF16_TFLOPS = 989.4  # H100 SXM dense BF16 (datasheet)


def _kernel_points(gpu: str) -> dict:
    return yaml.safe_load(
        resources.files("simulator.hardware").joinpath("kernels", f"{gpu}.yaml").read_text()
    )


def _model(gpu: str, precision: str, impl: str = "cudnn") -> ComputeModel:
    return ComputeModel(get_gpu(gpu), compute_calibration(gpu), precision, impl)


@pytest.mark.parametrize("impl", ["fa2", "cudnn", "fa3"])
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_attention_model_reproduces_the_fa3_paper_sweeps(impl, direction):
    """The tiled-kernel model (attention.py) against every bf16 point of the FA3 paper's H100 sweeps (sequence
    512-16k, head dim 64-256, causal or not): median within 8%, none beyond 20%."""
    k = attention_kernel("h100-sxm", impl, direction)
    assert k is not None
    pts = [
        a
        for a in _kernel_points("h100-sxm")["attention"]
        if a["impl"] == impl and a["direction"] == direction and a.get("precision") == "bf16"
        and a.get("causal") is not None and str(a.get("source", "")).startswith("FA3 paper")
    ]  # fmt: skip
    assert len(pts) >= 12
    err = [
        abs(k.efficiency(a["seq_len"], a["head_dim"], a["causal"]) * H100_BF16_TFLOPS / a["tflops"] - 1)
        for a in pts
    ]
    assert np.median(err) <= 0.08
    assert max(err) <= 0.20


def test_attention_yaml_is_the_fit_of_the_shipped_measurements():
    """attention.yaml is what ``python -m simulator.calibrate attention`` writes from kernels/*.yaml."""
    shipped = yaml.safe_load(resources.files("simulator.hardware").joinpath("attention.yaml").read_text())
    refit = fitted()
    for arch, entry in refit["architectures"].items():
        for impl, dirs in entry["kernels"].items():
            for direction, k in dirs.items():
                old = shipped["architectures"][arch]["kernels"][impl][direction]
                assert old["peak_fraction"] == pytest.approx(k["peak_fraction"], rel=0.01, abs=1e-3)


@pytest.mark.parametrize("gpu", ["h100-sxm", "a100-sxm-80gb"])
@pytest.mark.parametrize("direction", ["fwd", "bwd"])
def test_flashattention_1_runs_at_half_flashattention_2(gpu, direction):
    """FlashAttention-2 is 'around 2x' FlashAttention-1 (Dao 2023, abstract: 50-73% against 25-40% of the A100
    peak); both issue the same mma.sync instructions on Hopper, so every shape runs at half FA2's rate there too."""
    fa1, fa2 = attention_kernel(gpu, "fa1", direction), attention_kernel(gpu, "fa2", direction)
    assert fa1 is not None and fa2 is not None
    for seq, hd, causal in ((2048, 128, True), (65536, 128, True), (4096, 64, False)):
        assert fa1.efficiency(seq, hd, causal) == pytest.approx(0.5 * fa2.efficiency(seq, hd, causal), rel=2e-3)
    a100_fa1 = attention_kernel("a100-sxm-80gb", "fa1", "fwd")
    assert a100_fa1 is not None and 0.25 <= a100_fa1.peak_fraction <= 0.40  # the abstract's FA1 range


def test_attention_rises_with_sequence_and_causal_costs_more():
    """Longer sequences amortise each query tile's fixed cost; causal masking wastes the diagonal tiles."""
    k = attention_kernel("h100-sxm", "fa3", "fwd")
    assert k is not None
    effs = [k.efficiency(s, 128, True) for s in (512, 2048, 8192, 32768)]
    assert effs == sorted(effs)
    assert k.efficiency(2048, 128, True) < k.efficiency(2048, 128, False)


def test_fp8_gemm_ratio_is_the_same_machine_measurement():
    """0.883 = (1402.6 / 1978.9) / (794.5 / 989.4): stas00's fp8 and bf16 matmuls on one H100 SXM."""
    assert fp8_gemm_ratio("h100-sxm") == pytest.approx((1402.6 / 1978.9) / (794.5 / 989.4), abs=1e-3)
    assert fp8_gemm_ratio("b200") == pytest.approx((2544.7 / 4500) / (1512.8 / 2250), abs=1e-3)


def test_fp8_linear_gemm_efficiency_and_attention_stays_16_bit():
    """An 8192³ GEMM: FP8 runs at the profile's fitted FP8 efficiency of the doubled peak, or without a fit at
    the BF16 efficiency times the measured FP8/BF16 ratio; GEMMs outside the linear layers and fused attention
    run as under BF16 (16 bits)."""
    bf16, fp8 = _model("h100-sxm", "bf16"), _model("h100-sxm", "fp8")
    g, n = fp8.calib.gemm, 8192
    assert g.fp8_max_efficiency is not None
    speedup = bf16.gemm(n, n, n).duration_s / fp8.gemm(n, n, n).duration_s
    assert speedup == pytest.approx(2 * g.fp8_max_efficiency / g.max_efficiency, rel=0.02)
    unfitted = replace(fp8, calib=replace(fp8.calib, gemm=replace(g, fp8_max_efficiency=None)))
    speedup = bf16.gemm(n, n, n).duration_s / unfitted.gemm(n, n, n).duration_s
    assert speedup == pytest.approx(2 * fp8_gemm_ratio("h100-sxm"), rel=0.02)
    assert fp8.gemm(n, n, n, linear=False).duration_s == pytest.approx(bf16.gemm(n, n, n).duration_s)
    a = dict(seq_k=8192.0, head_dim=128, causal=True)
    assert (
        fp8.flash_attention(1e12, 1e9, False, **a).duration_s
        == bf16.flash_attention(1e12, 1e9, False, **a).duration_s
    )


def test_fp8_cast_moves_read_16_bit_write_fp8_and_its_transpose():
    """TE cast_transpose of n bf16 elements: reads 2n bytes, writes n (FP8) + n (its transpose)."""
    fp8 = _model("h100-sxm", "fp8")
    assert fp8.fp8_cast(1e6, transpose=True).bytes == 4e6
    assert fp8.fp8_cast(1e6, transpose=False).bytes == 3e6


GPUS = ["a100-sxm-80gb", "h100-sxm", "h200-sxm", "h800-sxm", "b200"]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(
    gpu=st.sampled_from(GPUS),
    precision=st.sampled_from(["bf16", "fp16", "fp8"]),
    m=st.integers(1, 1 << 17), n=st.integers(1, 1 << 16), k=st.integers(1, 1 << 16), batch=st.integers(1, 64),
    seq=st.integers(128, 1 << 19), head_dim=st.sampled_from([64, 96, 128, 192, 256]), causal=st.booleans(),
    impl=st.sampled_from(["fa1", "fa2", "cudnn", "fa3"]),
)  # fmt: skip
def test_no_kernel_beats_the_gpus_peak_or_its_hbm(
    gpu, precision, m, n, k, batch, seq, head_dim, causal, impl
):
    """GEMMs, fused attention and element-wise kernels stay under the dense peak of the precision they run in
    and under the datasheet HBM bandwidth, whatever the shape."""
    spec = get_gpu(gpu)
    if precision == "fp8" and "fp8" not in spec.peak_flops_per_s:
        return
    cm = _model(gpu, precision, impl)
    g = cm.gemm(m, n, k, batch)
    assert g.flops / g.duration_s <= spec.peak(precision) * (1 + 1e-9)
    assert g.bytes / g.duration_s <= spec.hbm_bytes_per_s * (1 + 1e-9)
    flops = 4.0 * seq * seq * head_dim * (0.5 if causal else 1.0)
    for backward in (False, True):
        a = cm.flash_attention(
            flops, 4.0 * seq * head_dim, backward, seq_k=seq, head_dim=head_dim, causal=causal
        )
        assert a.flops / a.duration_s <= spec.peak("bf16") * (1 + 1e-9)
    e = cm.elementwise(float(m) * n)
    assert e.bytes / e.duration_s <= spec.hbm_bytes_per_s


def test_framework_profiles_are_mechanisms():
    """Eager torchtitan moves more bytes in more kernels than Megatron's fused TE kernels; torch.compile fuses
    them back; every framework a scenario may name has a profile."""
    fused, eager, compiled = (
        framework_profile(n) for n in ("megatron-core", "torchtitan", "torchtitan-compile")
    )
    assert eager.norm.kernels > fused.norm.kernels and eager.norm.traffic > fused.norm.traffic
    assert compiled.norm.kernels == 1 and compiled.activation.traffic == pytest.approx(1.0)
    assert profile_for("torchtitan", compile=True).name == "torchtitan-compile"
    assert profile_for("megatron-core", compile=False).name == "megatron-core"
    assert {"megatron-core", "torchtitan", "llm-foundry", "deepspeed"} <= set(profile_names())
    assert framework_profile("llm-foundry").rotary is None  # MPT uses ALiBi


# ------------------------------------------------------------------------------- FP8 recipes, MoE launches
@pytest.mark.parametrize("recipe", ["delayed", "current", "mxfp8"])
def test_fp8_cast_by_recipe(recipe):
    """Bytes and launches of quantising 16 tensors of 1M elements each (TE 2.9, compute.py ``fp8_cast``):
    delayed casts them all in one fused kernel reading 2 B and writing 1 + 1 (transpose) B per element;
    current scaling reads each tensor once more for its amax and launches 4 kernels per tensor; MXFP8 one
    kernel per tensor."""
    kernels = framework_profile("megatron-core").cast_kernels(recipe)
    cm = replace(_model("h100-sxm", "fp8"), fp8_recipe=recipe, fp8_cast_kernels=kernels, kernel_launch_s=40e-6)
    n = 16 * 2**20
    t = cm.fp8_cast(n, transpose=True, tensors=16)
    launches = {"delayed": 1, "current": 16 * 4, "mxfp8": 16}[recipe]
    per_element = {"delayed": 4, "current": 6, "mxfp8": 4}[recipe]
    assert t.bytes == n * per_element
    assert t.launch_s == pytest.approx(launches * cm.kernel_launch_s)
    hbm = n * per_element / cm.memory_bytes_per_s
    assert t.duration_s == pytest.approx(hbm + launches * cm.calib.kernel_gap_s)


def test_megatron_launches_one_gemm_per_local_expert(make_scenario):
    """TE 2.9's GroupedLinear runs a cuBLASLt GEMM per local expert (multi_stream_cublas_gemm); a framework
    with one grouped kernel launches once. The GPU time is the same grouped GEMM in both."""
    from simulator.build.setup import Setup
    from simulator.topology.loader import build_cluster

    model = {"layers": 2, "hidden": 1024, "heads": 16, "ffn_hidden": 2048, "vocab": 4096, "gated_mlp": True,
             "moe": {"experts": 32, "top_k": 4, "expert_ffn_hidden": 512}}  # fmt: skip
    gemms = {}
    for name in ("megatron-core", "torchtitan"):
        sc = make_scenario(model=model, parallelism__ep=8, framework__name=name)
        setup = Setup(sc, build_cluster(sc.topology, file="<test>"), "symmetric")
        steps = {s.name: s for s in setup.workload.layer_builder.moe_block_forward() if hasattr(s, "time")}
        gemms[name] = steps["expert_fc1"].time
    per_launch = {name: framework_profile(name).kernel_launch_s for name in gemms}
    assert per_launch["megatron-core"] > 0 and per_launch["torchtitan"] > 0
    assert gemms["megatron-core"].launch_s == pytest.approx(32 // 8 * per_launch["megatron-core"])
    assert gemms["torchtitan"].launch_s == pytest.approx(per_launch["torchtitan"])
    assert gemms["megatron-core"].duration_s == pytest.approx(gemms["torchtitan"].duration_s)
