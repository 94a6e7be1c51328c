"""Closed forms on the simulated timeline: no communication without parallelism, pipeline bubbles of GPipe,
1F1B and interleaved 1F1B (Narayanan et al. 2021; docs/reference.md, "Pipeline schedules"), the ring
all-reduce time through the network model (Thakur, Rabenseifner & Gropp 2005), and the invariants every
trace must keep (no negative times, no overlapping ops on one stream)."""

from __future__ import annotations

import numpy as np
import pytest
import simpy
from conftest import NIC_GBPS, NVLINK_GBPS, PCIE_GBPS, host_topology
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.engine.trace import Trace
from simulator.hardware.calibration import link_calibration
from simulator.network.models.base import CollectiveRequest, PhaseCache
from simulator.registry import NETWORK_MODELS
from simulator.simulate import SimulationResult, simulate
from simulator.topology.loader import build_cluster
from simulator.workload.ops import CollectiveKind

COMPUTE = ("forward", "backward", "recompute")
COMM_FIELDS = ("tp_s", "dp_s", "pp_s", "ep_s", "cp_s")

# A wide, shallow-vocabulary GPT: each layer costs ~10^13 FLOPs per micro-batch, while the embedding and
# the output layer (vocab 128) add well under 1% to the first and last stage. Stages are then uniform to
# the precision the closed forms need, and pipeline messages (16-bit activations over NVLink) are ~0.1% of
# a stage's compute.
WIDE_MODEL = {"layers": 16, "hidden": 8192, "heads": 64, "vocab": 128}


def _durations(trace: Trace, rows: np.ndarray) -> np.ndarray:
    return trace.end_s[rows] - trace.start_s[rows]


def stage_times(trace: Trace, micro_batches: int) -> tuple[np.ndarray, np.ndarray]:
    """Per simulated rank (one per stage here): forward and backward compute time per micro-batch."""
    fwd, bwd = [], []
    for rank in trace.ranks:
        rows = trace.select(rank)
        cat = np.array([trace.category[i] for i in rows])
        fwd.append(_durations(trace, rows[cat == "forward"]).sum() / micro_batches)
        bwd.append(_durations(trace, rows[np.isin(cat, ("backward", "recompute"))]).sum() / micro_batches)
    return np.array(fwd), np.array(bwd)


def max_p2p(trace: Trace) -> float:
    """Longest pipeline transfer of the trace."""
    rows = np.flatnonzero(np.array(trace.comm) == "pp")
    return float(_durations(trace, rows).max()) if rows.size else 0.0


def pipeline(make_scenario, p: int, m: int, schedule: str, v: int = 1) -> SimulationResult:
    """p stages on one host of p GPUs (tp = dp = 1: the only communication is the pipeline's)."""
    model = dict(WIDE_MODEL, layers=8 * p)
    scenario = make_scenario(
        gpus_per_host=p, model=model, pp=p, micro_batches=m, seq_len=2048, schedule=schedule,
        virtual_stages=v, training__optimizer="sgd",
    )  # fmt: skip
    return simulate(scenario)


# ------------------------------------------------------------------------------ no parallelism, no comm
def test_single_gpu_has_no_communication(make_scenario):
    """tp = pp = dp = 1: every communication figure is 0, the trace holds no communication op, and the
    step is the back-to-back sum of the compute stream's ops."""
    result = simulate(make_scenario(gpus_per_host=1, micro_batches=4))
    rep, trace = result.report, result.trace
    assert rep.gpus == 1
    assert rep.layout is not None and (rep.layout.tp, rep.layout.pp, rep.layout.dp) == (1, 1, 1)
    for name in COMM_FIELDS:
        assert getattr(rep.comm, name) == 0.0, name
    assert rep.breakdown.exposed_comm_s == 0.0
    assert rep.breakdown.overlapped_comm_s == 0.0
    assert rep.breakdown.bubble_s == 0.0
    assert "comm" not in trace.category
    assert set(trace.comm) <= {""}
    assert set(trace.stream) == {"compute"}
    total = float(_durations(trace, np.arange(len(trace))).sum())
    assert rep.step_time_s == pytest.approx(total, rel=1e-9)
    assert rep.breakdown.compute_s + rep.breakdown.other_s == pytest.approx(rep.step_time_s, rel=1e-9)


# ------------------------------------------------------------------------------------- pipeline bubbles
@pytest.mark.parametrize("schedule", ["1f1b", "gpipe"])
@pytest.mark.parametrize("p,m", [(2, 1), (2, 3), (2, 8), (4, 1), (4, 4), (4, 6)])
def test_pipeline_bubble_matches_closed_form(make_scenario, schedule, p, m):
    """Uniform stages: the first stage idles (p−1)·(t_F + t_B), i.e. (p−1)/(m+p−1) of the pipelined step.

    t_F and t_B are the stages' own forward and backward compute times per micro-batch, read from the
    trace. The tolerance is what the stages' residual non-uniformity and the pipeline messages on the
    critical path can account for: for a flow shop the first stage's idle time differs from the uniform
    value by at most m·(range of t_F + range of t_B), and 2(p−1) messages cross the critical path.
    """
    result = pipeline(make_scenario, p, m, schedule)
    b = result.report.breakdown
    f, bw = stage_times(result.trace, m)
    assert (np.ptp(f + bw) / np.mean(f + bw)) < 0.01, "the stages must be uniform for the closed form"
    expected = (p - 1) * (f.mean() + bw.mean())
    tol = m * (np.ptp(f) + np.ptp(bw)) + 2 * (p - 1) * max_p2p(result.trace)
    assert tol < 0.02 * expected
    assert b.bubble_s == pytest.approx(expected, abs=tol)
    pipelined = b.compute_s + b.bubble_s  # the step without the optimizer and stage 0's own messages
    assert b.compute_s == pytest.approx(m * (f[0] + bw[0]), rel=1e-9)
    assert b.bubble_s / pipelined == pytest.approx((p - 1) / (m + p - 1), rel=0.02)


@pytest.mark.parametrize("p,m", [(2, 4), (4, 4), (4, 8)])
def test_gpipe_bubble_equals_1f1b_bubble(make_scenario, p, m):
    """GPipe and 1F1B leave the same bubble; they differ in memory (m vs p micro-batches in flight)."""
    gpipe = pipeline(make_scenario, p, m, "gpipe").report
    ofob = pipeline(make_scenario, p, m, "1f1b").report
    assert gpipe.breakdown.bubble_s == pytest.approx(ofob.breakdown.bubble_s, rel=0.005)
    assert gpipe.breakdown.compute_s == pytest.approx(ofob.breakdown.compute_s, rel=1e-9)
    if m > p:
        assert gpipe.memory_gib_per_gpu.activations > ofob.memory_gib_per_gpu.activations


@pytest.mark.parametrize("p,m,v", [(2, 2, 2), (2, 4, 2), (4, 4, 2), (4, 8, 2), (2, 4, 4)])
def test_interleaved_bubble_shrinks_by_chunks(make_scenario, p, m, v):
    """Interleaved 1F1B with v chunks per rank: bubble (p−1)·(t_F + t_B)/v, i.e. (p−1)/(v·m) of the ideal
    time m·(t_F + t_B); v times smaller than plain 1F1B's. 3%: the output layer makes the last chunk a
    little heavier than the others, and interleaving sends v times more pipeline messages."""
    inter = pipeline(make_scenario, p, m, "interleaved", v)
    plain = pipeline(make_scenario, p, m, "1f1b").report
    b = inter.report.breakdown
    f, bw = stage_times(inter.trace, m)
    expected = (p - 1) * (f.mean() + bw.mean()) / v
    assert b.bubble_s == pytest.approx(expected, rel=0.03)
    assert b.bubble_s / b.compute_s == pytest.approx((p - 1) / (v * m), rel=0.03)
    assert plain.breakdown.bubble_s / b.bubble_s == pytest.approx(v, rel=0.03)
    assert inter.report.step_time_s < plain.step_time_s


# ----------------------------------------------------------------------------- ring all-reduce, α-β form
def _all_reduce_time(model: str, gpus_per_host: int, nodes: int, n: int, nbytes: float) -> float:
    cluster = build_cluster(host_topology(gpus_per_host, nodes), file="<test>")
    env = simpy.Environment()
    network = NETWORK_MODELS.get(model)(env, PhaseCache(cluster, link_calibration(), "ring"))
    group = (np.arange(n) * (gpus_per_host if nodes > 1 else 1))[None, :]
    done: list[float] = []
    network.run(
        CollectiveRequest(CollectiveKind.ALL_REDUCE, group, nbytes, ("g",)), lambda: done.append(env.now)
    )
    env.run()
    assert len(done) == 1
    return done[0]


@pytest.mark.parametrize("model", ["flow", "analytical"])
@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 8), nbytes=st.floats(1e3, 1e10))
def test_ring_all_reduce_inside_a_host(model, n, nbytes):
    """n GPUs of one NVSwitch host: 2(n−1)/n·S/B + 2(n−1)·α, B = NVLink rate × calibrated ring efficiency."""
    cal = link_calibration()
    bw = NVLINK_GBPS * 1e9 * cal.link_efficiency("nvlink3", "ring")
    alpha = cal.step_latency("nvlink3")
    # + NCCL's fixed per-collective cost (tuning.cc baseLat, calibration base_latency)
    expected = 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * alpha + cal.base_latency("ring")
    assert _all_reduce_time(model, 8, 1, n, nbytes) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("model", ["flow", "analytical"])
@settings(max_examples=10, deadline=None)
@given(n=st.integers(2, 4), nbytes=st.floats(1e3, 1e10))
def test_ring_all_reduce_across_hosts(model, n, nbytes):
    """One GPU on each of n hosts: the NIC is the bottleneck (B = NIC rate × calibrated efficiency) and each
    step pays the slowest α of the links it crosses (NIC and PCIe)."""
    cal = link_calibration()
    bw = NIC_GBPS * 1e9 * cal.link_efficiency("ib-hdr", "ring")
    assert PCIE_GBPS > NIC_GBPS
    alpha = max(cal.step_latency("ib-hdr"), cal.step_latency("pcie4"))
    expected = 2 * (n - 1) / n * nbytes / bw + 2 * (n - 1) * alpha + cal.base_latency("ring")
    assert _all_reduce_time(model, 2, n, n, nbytes) == pytest.approx(expected, rel=1e-9)


# ------------------------------------------------------------------------------------ trace invariants
layouts = st.tuples(
    st.sampled_from([1, 2, 4]),  # tp
    st.sampled_from([1, 2, 4]),  # pp
    st.sampled_from([1, 2]),  # dp
    st.integers(1, 6),  # micro-batches
    st.sampled_from(["1f1b", "gpipe"]),
    st.sampled_from([0, 1]),  # zero
    st.sampled_from([2, 4, 8]),  # GPUs per host
)


@settings(max_examples=30, deadline=None)
@given(layout=layouts)
def test_timeline_invariants(make_scenario, layout):
    """Step time ≥ 0; every interval has end ≥ start ≥ 0; ops of one stream of one rank never overlap;
    the step ends with the last op and the breakdown adds up to it."""
    tp, pp, dp, m, schedule, zero, per_host = layout
    world = tp * pp * dp
    per_host = min(per_host, world)
    rep_trace = simulate(
        make_scenario(gpus_per_host=per_host, nodes=world // per_host, tp=tp, pp=pp, micro_batches=m,
                      schedule=schedule, zero=zero)
    )  # fmt: skip
    rep, trace = rep_trace.report, rep_trace.trace
    assert rep.step_time_s > 0
    assert np.all(trace.start_s >= 0)
    assert np.all(trace.end_s >= trace.start_s)
    assert rep.step_time_s == pytest.approx(float(trace.end_s.max()), rel=1e-12)
    keys = {(int(r), s) for r, s in zip(trace.rank.tolist(), trace.stream, strict=True)}
    for rank, stream in keys:
        rows = [i for i in trace.select(rank) if trace.stream[i] == stream]
        order = np.argsort(trace.start_s[rows], kind="stable")
        st_, en = trace.start_s[rows][order], trace.end_s[rows][order]
        assert np.all(st_[1:] >= en[:-1] - 1e-12 * max(rep.step_time_s, 1.0)), (rank, stream)
    b = rep.breakdown
    parts = [b.compute_s, b.exposed_comm_s, b.overlapped_comm_s, b.bubble_s, b.other_s]
    assert all(x >= 0 for x in parts)
    total = b.compute_s + b.exposed_comm_s + b.bubble_s + b.other_s
    assert total == pytest.approx(rep.step_time_s, rel=1e-9)
