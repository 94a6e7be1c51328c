"""Megatron's gradient-accumulation fusion (Megatron-LM 83b1e42f): the weight-gradient GEMM adds into the main
gradient in its epilogue (cuBLASLt beta = 1) instead of writing a 16-bit gradient that a separate
``main_grad.add_`` kernel adds; frameworks without it (PyTorch autograd's AccumulateGrad) keep the kernel."""

from __future__ import annotations

import pytest

from simulator.build.setup import Setup
from simulator.topology.loader import build_cluster

MODEL = {"layers": 2, "hidden": 1024, "heads": 16, "ffn_hidden": 4096, "vocab": 4096}


def _backward(make_scenario, **kw):
    sc = make_scenario(model=MODEL, seq_len=512, **kw)
    setup = Setup(sc, build_cluster(sc.topology, file="<test>"), "symmetric")
    steps = setup.workload.layer_builder.backward(param_count=12 * 1024**2)
    return setup, {s.name: s for s in steps if hasattr(s, "time")}


def test_fused_accumulation_moves_into_the_wgrad_gemm(make_scenario):
    """With fusion (Megatron-Core's default) the layer has no accumulation kernel and each wgrad GEMM reads and
    writes its [k, n] output in fp32 (8 bytes per weight) instead of writing it in bf16 (2 bytes); without it
    the GEMM writes 2 bytes and one kernel moves 2 + 4 + 4 bytes per parameter (read the fresh gradient, read
    and write the fp32 main gradient)."""
    setup, fused = _backward(make_scenario, framework__name="megatron-core")
    _, unfused = _backward(make_scenario, framework__name="megatron-core",
                           framework__gradient_accumulation_fusion=False)  # fmt: skip
    assert "grad_accumulate" not in fused and "grad_accumulate" in unfused
    assert unfused["grad_accumulate"].time.bytes == pytest.approx(12 * 1024**2 * (2 + 4 + 4))
    w_in, w_out = 1024, 4096  # fc1: [1024, 4096] weight, 512 tokens
    extra = fused["fc1_wgrad"].time.bytes - unfused["fc1_wgrad"].time.bytes
    assert extra == pytest.approx(w_in * w_out * (8 - 2))
    assert setup.framework.fused_grad_accumulation


def test_eager_pytorch_keeps_the_accumulation_kernel(make_scenario):
    """torchtitan's FSDP2 accumulates through autograd: a separate add, as before."""
    setup, steps = _backward(make_scenario, framework__name="torchtitan", zero=3)
    assert not setup.framework.fused_grad_accumulation and "grad_accumulate" in steps


def test_a_compute_bound_wgrad_pays_no_time_for_its_epilogue(make_scenario):
    """The epilogue's traffic overlaps the main loop (the kernel is bounded by the larger of compute and memory):
    a wgrad GEMM over many tokens takes the same time fused or not; over few tokens it becomes memory bound."""
    from simulator.hardware.calibration import compute_calibration
    from simulator.hardware.compute import ComputeModel
    from simulator.hardware.gpu import get_gpu

    cm = ComputeModel(get_gpu("h100-sxm"), compute_calibration("h100-sxm"), "bf16", "cudnn")
    many, few = cm.gemm(8192, 8192, 16384), cm.gemm(8192, 8192, 64)
    assert cm.gemm(8192, 8192, 16384, accumulate_bytes=4).duration_s == pytest.approx(many.duration_s)
    slow = cm.gemm(8192, 8192, 64, accumulate_bytes=4)
    assert slow.duration_s > few.duration_s
    assert slow.duration_s >= slow.bytes / cm.memory_bytes_per_s
