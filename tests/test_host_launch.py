"""The host side of a step (issue #8/#9): the host launches kernels ahead of the GPU and the GPU waits only where
the host falls behind, e.g. after Megatron-Core's dropless dispatcher waits for the token counts
(``workload/steps.py``, ``frameworks/host.yaml``), and the per-framework launch costs and their fit."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.calibrate import gemm_transfer, host
from simulator.frameworks.profile import framework_profile, host_costs, profile_names
from simulator.hardware.calibration import compute_calibration
from simulator.hardware.compute import KernelTime
from simulator.hardware.gpu import get_gpu
from simulator.workload.ops import Axis, CollectiveKind, CommKind
from simulator.workload.steps import CommStep, FusedCompute, HostSync, KernelStep, compile_steps


def _kernel(name: str, gpu_s: float, launch_s: float) -> KernelStep:
    return KernelStep(name, KernelTime(gpu_s, 0.0, 0.0, launch_s), 0.0)


def _comm(name: str) -> CommStep:
    return CommStep(name, CollectiveKind.ALL_TO_ALL, CommKind.EP, Axis.EP, 1e6)


def _fused(ops) -> list[FusedCompute]:
    return [o for o in ops if isinstance(o, FusedCompute)]


def test_a_pass_whose_kernels_outlast_their_launches_is_never_host_bound():
    """Short kernels (launch 30 us, GPU 1 us) after long ones: the host launched them while the GPU ran the long
    ones, so nothing is stretched, though the short run alone is launch bound."""
    steps = [_kernel("long", 10e-3, 30e-6), _comm("a2a"), *[_kernel(f"s{i}", 1e-6, 30e-6) for i in range(20)]]
    runs = _fused(compile_steps(steps, False))
    assert [r.duration_s for r in runs] == [pytest.approx(10e-3), pytest.approx(20e-6)]


def test_after_a_host_sync_kernels_run_at_the_launch_rate():
    """The same pass with a host synchronisation before the short kernels: the host can no longer be ahead, so
    the 20 short kernels last their 20 launches (600 us), not their 20 us of GPU time (closed form: a run of GPU
    time d and launches l entered with lead 0 lasts max(d, l))."""
    steps = [_kernel("long", 10e-3, 30e-6), _comm("a2a"), HostSync("test"),
             *[_kernel(f"s{i}", 1e-6, 30e-6) for i in range(20)]]  # fmt: skip
    runs = _fused(compile_steps(steps, False))
    assert runs[-1].duration_s == pytest.approx(20 * 30e-6)
    assert runs[0].duration_s == pytest.approx(10e-3)


def test_the_lead_carries_from_run_to_run_after_a_sync():
    """After a sync, a long kernel (1 ms, launched in 30 us) gives the host 0.97 ms of lead: the next 20 short
    kernels (600 us of launches) hide under it; 40 would not (1.2 ms of launches: 230 us stretched)."""
    for n, stretch in ((20, 0.0), (40, 40 * 30e-6 - (1e-3 - 30e-6) - 40e-6)):
        steps = [HostSync("t"), _kernel("long", 1e-3, 30e-6), _comm("c"), *[_kernel(f"s{i}", 1e-6, 30e-6) for i in range(n)]]
        runs = _fused(compile_steps(steps, False))
        assert runs[-1].duration_s == pytest.approx(n * 1e-6 + stretch)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-7, 1e-2), st.floats(0.0, 1e-4), st.booleans()), min_size=1, max_size=30))
def test_host_bound_time_is_bounded_by_launches_and_gpu_time(kernels):
    """Whatever the kernels and syncs: each fused op lasts at least its GPU time, the stretch never exceeds the
    launches, and without any sync nothing lasts longer than max(GPU time, launches) of the whole pass."""
    steps = []
    for i, (gpu_s, launch_s, sync) in enumerate(kernels):
        if sync:
            steps.append(HostSync("t"))
        steps += [_kernel(f"k{i}", gpu_s, launch_s), _comm(f"c{i}")]
    runs = _fused(compile_steps(steps, False))
    gpu = sum(k[0] for k in kernels)
    launches = sum(k[1] for k in kernels)
    total = sum(r.duration_s for r in runs)
    assert total >= gpu * (1 - 1e-12)
    assert total <= gpu + launches + 1e-12


def _moe_forward(make_scenario, **over):
    from simulator.build.setup import Setup
    from simulator.topology.loader import build_cluster

    model = {"layers": 2, "hidden": 1024, "heads": 16, "ffn_hidden": 2048, "vocab": 4096, "gated_mlp": True,
             "moe": {"experts": 32, "top_k": 4, "expert_ffn_hidden": 512, **over.pop("moe", {})}}  # fmt: skip
    sc = make_scenario(model=model, parallelism__ep=over.pop("ep", 8), **over)
    lb = Setup(sc, build_cluster(sc.topology, file="<test>"), "symmetric").workload.layer_builder
    return lb.moe_block_forward(), lb.moe_block_backward()


@pytest.mark.parametrize("ep", [1, 8])
def test_megatron_dropless_dispatch_waits_for_the_counts_once_per_layer_forward(make_scenario, ep):
    """Megatron-Core's dropless all-to-all dispatcher: one host sync per MoE layer forward, after the counts'
    all-gather and before the dispatch all-to-all (whose split sizes it needs); none in the backward."""
    fwd, bwd = _moe_forward(make_scenario, ep=ep)
    syncs = [i for i, s in enumerate(fwd) if isinstance(s, HostSync)]
    assert len(syncs) == 1 and not any(isinstance(s, HostSync) for s in bwd)
    names = [getattr(s, "name", "") for s in fwd]
    if ep > 1:
        assert names.index("moe_counts_allgather") < syncs[0] < names.index("moe_dispatch")


def test_no_sync_with_a_capacity_factor_or_in_torchtitan(make_scenario):
    """Token dropping (fixed capacity) needs no counts on the host; torchtitan's grouped GEMM takes device
    offsets."""
    for over in ({"moe": {"capacity_factor": 1.0}}, {"framework__name": "torchtitan"}):
        fwd, _ = _moe_forward(make_scenario, **over)
        assert not any(isinstance(s, HostSync) for s in fwd), over


def test_every_framework_profile_has_a_sourced_launch_cost_within_the_measured_bounds():
    """host.yaml names a cost and its source for every profile; fitted ones lie within the fit's measured
    bounds (the CUDA launch path alone, one TE module call per kernel), measured ones too."""
    costs = host_costs()
    assert set(costs) == set(profile_names())
    for name in profile_names():
        c = costs[name]
        assert host.LOWER_US <= c["kernel_launch_us"] <= host.UPPER_US, name
        assert len(c["source"]) > 40, name
        assert framework_profile(name).kernel_launch_s == pytest.approx(c["kernel_launch_us"] * 1e-6)
    assert costs["megatron-core"].get("fitted") and costs["megatron-core"].get("fitted_on")
    assert costs["torchtitan-compile"]["kernel_launch_us"] < costs["torchtitan"]["kernel_launch_us"]


def test_kernel_fits_reproduce_the_xla_tables_and_the_tile_overhead_scales_with_the_per_sm_peak():
    """The GEMM model fitted on each GPU's XLA table points (m·n at least 148 tiles): within 8% RMS; and
    Blackwell's tile overhead in main-loop iterations is Hopper's times the ratio of peak per SM (the same
    fixed time, iterations twice as fast), within 15%."""
    ref = compute_calibration("h100-sxm")
    fits = {g: gemm_transfer.kernel_fit(g, ref) for g in ("h100-sxm", "b200")}
    assert all(rms < 0.08 for _, _, rms in fits.values())
    per_sm = {g: get_gpu(g).peak("bf16") / get_gpu(g).sm_count for g in fits}
    ratio = fits["b200"][1] / fits["h100-sxm"][1]
    assert ratio == pytest.approx(per_sm["b200"] / per_sm["h100-sxm"], rel=0.15)


def test_shipped_b200_profile_is_the_transfer_of_the_h100_profile():
    """b200.yaml is what ``python -m simulator.calibrate transfer`` writes from the shipped H100 profile."""
    cal, _ = gemm_transfer.transfer("b200")
    shipped = compute_calibration("b200")
    assert shipped.gemm == cal.gemm
    assert shipped.inherited_from is None
    assert compute_calibration("gb200").inherited_from == "b200"


