"""Transformer Engine's userbuffers overlap of tensor-parallel communication (``parallelism.tp_comm_overlap``):
the pipelined reduce-scatters and bulk all-gathers / reduce-scatters run a 16-SM communication kernel beside
their GEMM and launch the GEMM on the remaining SMs (TE v2.9 initialize_ub defaults, ``set_sm_margin``;
comm_gemm_overlap.cpp ``_math_sms = sm_count - num_comm_sm``); the ring-exchange all-gathers move data on the
copy engines and leave every SM to the GEMM."""

from __future__ import annotations

import math

import pytest

from simulator.build.setup import Setup
from simulator.hardware.calibration import compute_calibration
from simulator.hardware.compute import ComputeModel
from simulator.hardware.gpu import get_gpu
from simulator.topology.loader import build_cluster

MODEL = {"layers": 2, "hidden": 2048, "heads": 16, "ffn_hidden": 8192, "vocab": 4096}
MARGIN = {"attn_proj", "fc2", "qkv_dgrad", "qkv_wgrad", "fc1_dgrad", "fc1_wgrad"}
FULL = {"qkv", "fc1", "attn_proj_dgrad", "fc2_dgrad", "attn_proj_wgrad", "fc2_wgrad"}


def test_a_gemm_on_fewer_sms_runs_more_waves():
    """Closed form: 132 tiles of 128x256 fill the H100's 132 SMs in one wave; on 116 SMs they take two, and the
    compute-bound time doubles (each SM's rate is unchanged)."""
    cm = ComputeModel(get_gpu("h100-sxm"), compute_calibration("h100-sxm"), "bf16", "cudnn")
    g = cm.calib.gemm
    m, n, k = 12 * g.tile_m, 11 * g.tile_n, 8192  # 132 tiles
    one, two = cm.gemm(m, n, k), cm.gemm(m, n, k, sms=116)
    gap = cm.calib.kernel_gap_s
    assert math.ceil(12 * 11 / cm.gpu.sm_count) == 1
    assert (two.duration_s - gap) == pytest.approx(2 * (one.duration_s - gap))
    assert cm.gemm(m, n, k, sms=cm.gpu.sm_count).duration_s == one.duration_s
    assert two.flops == one.flops and two.bytes == one.bytes


def _steps(make_scenario, overlap: bool, framework: str = "megatron-core") -> tuple[Setup, dict]:
    sc = make_scenario(model=MODEL, seq_len=2048, tp=4,
                       parallelism__sequence_parallel=True, parallelism__tp_comm_overlap=overlap,
                       framework__name=framework)  # fmt: skip
    setup = Setup(sc, build_cluster(sc.topology, file="<test>"), "symmetric")
    lb = setup.workload.layer_builder
    steps = [*lb.forward(), *lb.backward(param_count=1.0)]
    return setup, {s.name: s for s in steps if hasattr(s, "time")}


def test_overlapped_gemms_lose_the_communication_kernels_sms(make_scenario):
    """Under tp_comm_overlap the pipeline and bulk GEMMs take the time of the same GEMM on sm_count - 16 SMs;
    the ring-exchange and external ones keep their time; without the overlap nothing changes."""
    setup, on = _steps(make_scenario, True)
    _, off = _steps(make_scenario, False)
    sms = setup.workload.layer_builder.cm.gpu.sm_count
    ring = FULL - {"attn_proj_wgrad", "fc2_wgrad"}  # the external wgrads are not listed
    assert setup.framework.tp_overlap_sms == dict.fromkeys(MARGIN, 16) | dict.fromkeys(ring, 0)
    for name in MARGIN | FULL:
        assert on[name].time.flops == off[name].time.flops, name
        if name in FULL:
            assert on[name].time.duration_s == off[name].time.duration_s, name
        else:
            assert on[name].time.duration_s >= off[name].time.duration_s, name
    # fc2: [T, h] = [T, ffn/tp] x [ffn/tp, h] on sms - 16 SMs
    cm, t = setup.workload.layer_builder.cm, setup.workload.layer_builder.T
    expect = cm.gemm(t, MODEL["hidden"], MODEL["ffn_hidden"] // 4, sms=sms - 16)
    assert on["fc2"].time.duration_s == pytest.approx(expect.duration_s)


def test_frameworks_without_userbuffers_keep_every_sm(make_scenario):
    """A profile that names no overlapped GEMMs (PyTorch-eager frameworks) runs them on the whole GPU."""
    setup, steps = _steps(make_scenario, True, framework="torchtitan")
    assert setup.framework.tp_overlap_sms == {}
    _, off = _steps(make_scenario, False, framework="torchtitan")
    assert all(steps[n].time.duration_s == off[n].time.duration_s for n in MARGIN)
