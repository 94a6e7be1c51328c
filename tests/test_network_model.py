"""The network model end to end (``PhaseCache`` + flow and analytical models): calibrated busbw against
nccl-tests measurements, the latency- and bandwidth-bound regimes, closed forms of every algorithm on an
uncontended graph (Thakur, Rabenseifner & Gropp 2005; docs/reference.md; NCCL's tuner for the tree),
conservation of bytes, flow == analytical without contention, fair sharing of a link, and the cost of
an oversubscribed fabric, down to the step time of a scenario."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import networkx as nx
import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st
from network_fixtures import NIC_BYTES_PER_S, NVLINK_BYTES_PER_S, cached_cluster

from simulator.calibrate import links as calibrate_links
from simulator.hardware.calibration import LinkCalibration, link_calibration
from simulator.hardware.gpu import get_gpu
from simulator.network.bench import bench, time_request
from simulator.network.models.analytical import AnalyticalNetwork
from simulator.network.models.base import CollectiveRequest, PhaseCache, alone_time
from simulator.network.models.flow import FlowNetwork, _Transfer
from simulator.parallel.plan import ParallelDims, ParallelPlan
from simulator.scenario import scenario_from_dict
from simulator.simulate import simulate
from simulator.topology.cluster import Cluster
from simulator.topology.loader import load_topology
from simulator.units import GiB, KiB, MiB
from simulator.validation.nccl import nccl_rows
from simulator.workload.ops import CollectiveKind

AR, RS, AG = CollectiveKind.ALL_REDUCE, CollectiveKind.REDUCE_SCATTER, CollectiveKind.ALL_GATHER
A2A, SR = CollectiveKind.ALL_TO_ALL, CollectiveKind.SEND_RECV
TOPOLOGIES = Path(__file__).resolve().parents[1] / "topologies"
ALPHA_S = 4e-6  # per-step latency of the closed-form tests
sizes = st.floats(1e3, 1e10)


def ideal(alpha_s: float = ALPHA_S, per_type: dict[str, float] | None = None) -> LinkCalibration:
    """Every link at its full line rate for every protocol; α per step (per link type if given)."""
    return LinkCalibration({}, dict(per_type or {}), 1.0, alpha_s)


def req(kind: CollectiveKind, groups: np.ndarray, nbytes: float) -> CollectiveRequest:
    g = np.atleast_2d(np.asarray(groups, dtype=np.int64))
    return CollectiveRequest(kind, g, float(nbytes), (kind.value, g.tobytes()))


def both_models(cluster: Cluster, calib: LinkCalibration, algorithm: str, r: CollectiveRequest) -> float:
    """The time of ``r`` alone, asserting that the flow and analytical models agree on it."""
    cache = PhaseCache(cluster, calib, algorithm)
    flow, analytical = time_request(cache, r, "flow"), time_request(cache, r, "analytical")
    assert flow == pytest.approx(analytical, rel=1e-9)
    return flow


# ------------------------------------------------------------------------------ calibration vs nccl-tests
@pytest.fixture(scope="module")
def rows() -> list[dict[str, object]]:
    return nccl_rows()


def test_large_message_busbw_within_10_percent_of_every_measured_point(rows):
    assert {(r["system"], r["op"], r["gpus"]) for r in rows} >= {
        ("dgx-a100", "all_reduce", 8),
        ("dgx-h100", "all_reduce", 8),
        ("dgx-h100", "all_gather", 8),
        ("dgx-a100", "all_reduce", 16),
        ("ndr-400g-nic", "send_recv", 2),
    }
    bad = [r for r in rows if abs(float(r["error"])) > 0.10]  # type: ignore[arg-type]
    assert not bad, bad


def test_auto_picks_what_nccl_ran_at_large_sizes(rows):
    algos = {(r["system"], r["op"], r["gpus"]): r["algorithm"] for r in rows}
    assert algos[("dgx-h100", "all_reduce", 8)] == "nvls"  # NVLS is NCCL's default on H100 (issue 212)
    assert algos[("dgx-a100", "all_reduce", 8)] == "ring"  # no NVLS on NVLink3
    assert algos[("dgx-a100", "all_reduce", 16)] == "ring"


def test_links_yaml_is_what_the_calibration_script_writes():
    """The shipped file is the script's output, byte for byte (deterministic, rerunnable)."""
    assert calibrate_links.main(["--check"]) == 0, (
        "links.yaml is stale: rerun python -m simulator.calibrate links"
    )


def test_link_efficiency_is_per_hardware_type():
    calib = link_calibration()
    for link_type, per in calib.efficiency.items():
        assert set(per) <= {"ring", "tree", "nvls", "p2p"}, link_type
        assert all(0 < v <= 1 for v in per.values()), link_type
        assert per["tree"] <= per["ring"]
    assert calib.step_latency("nvlink4") == pytest.approx(0.6e-6)  # NCCL 2.20.3 hwLat NVLink ring LL
    assert calib.step_latency("ib-ndr") == pytest.approx(2.7e-6)  # hwLat NET ring LL


# ------------------------------------------------------------------------------ regimes over sizes
@pytest.mark.parametrize("topology,nodes,algorithm", [("dgx-a100", 2, "ring"), ("dgx-h100", 1, "nvls")])
def test_latency_bound_small_and_bandwidth_bound_large(topology, nodes, algorithm):
    cluster = load_topology(topology, nodes=nodes)
    curve = bench(cluster, AR, [int(KiB * 2**k) for k in range(24)], algorithm=algorithm)
    calib = link_calibration()
    if algorithm == "ring":  # every step priced at the slowest link type it crosses (NET)
        steps = 2 * (cluster.num_gpus - 1)
        alpha = max(calib.step_latency(t) for t in set(cluster.link_type))
    else:  # NVLS: a load-reduce round trip and a store, on NVLink
        steps, alpha = 2, calib.step_latency("nvlink4")
    lat = calib.base_latency(algorithm) + steps * alpha  # NCCL baseLat per collective + per-step hwLat
    assert calib.base_latency(algorithm) > 0
    assert curve[0].time_s == pytest.approx(lat, rel=0.01)  # 1 KiB: time ≈ base + steps·α
    assert curve[0].busbw_GBps < 0.01 * curve[-1].busbw_GBps
    top = [r.busbw_GBps for r in curve[-3:]]  # 2, 4, 8 GiB: flat
    assert max(top) / min(top) < 1.02
    assert all(b.busbw_GBps >= a.busbw_GBps for a, b in zip(curve, curve[1:], strict=False))
    # α-β crossover: at n½ = latency × peak algbw the busbw is half its plateau
    half = lat * curve[-1].algbw_GBps * 1e9
    (mid,) = bench(cluster, AR, [int(half)], algorithm=algorithm)
    assert mid.busbw_GBps == pytest.approx(curve[-1].busbw_GBps / 2, rel=0.02)


# ------------------------------------------------------------------------------ closed forms (efficiency 1)
@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 8), size=sizes)
def test_ring_all_reduce_closed_form(n, size):
    """2(n−1)α + 2(n−1)/n·S/B on one NVSwitch host."""
    cluster = cached_cluster(1, n)
    t = both_models(cluster, ideal(), "ring", req(AR, np.arange(n), size))
    expect = 2 * (n - 1) * ALPHA_S + 2 * (n - 1) / n * size / NVLINK_BYTES_PER_S
    assert t == pytest.approx(expect, rel=1e-9)


@pytest.mark.parametrize("kind", [RS, AG])
@settings(max_examples=10, deadline=None)
@given(n=st.integers(2, 8), size=sizes)
def test_ring_reduce_scatter_all_gather_closed_form(kind, n, size):
    """(n−1)α + (n−1)/n·S/B."""
    cluster = cached_cluster(1, n)
    t = both_models(cluster, ideal(), "ring", req(kind, np.arange(n), size))
    assert t == pytest.approx((n - 1) * ALPHA_S + (n - 1) / n * size / NVLINK_BYTES_PER_S, rel=1e-9)


@settings(max_examples=15, deadline=None)
@given(p=st.integers(4, 16), size=sizes)
def test_double_binary_tree_all_reduce_closed_form(p, size):
    """One GPU per host: 2⌈lg p⌉ steps (up, then down both trees) + 2S/B: a rank inner in one tree
    sends S/2 up and S/2 to each of two children there, S/2 up the other tree (NCCL's tuner: tree
    algbw = busbw / 2, tuning.cc). B is the NIC, narrower than PCIe."""
    cluster = cached_cluster(p, 1)
    alpha = {"pcie5": ALPHA_S, "ib-ndr": ALPHA_S}
    t = both_models(cluster, ideal(per_type=alpha), "tree", req(AR, np.arange(p), size))
    expect = 2 * math.ceil(math.log2(p)) * ALPHA_S + 2 * size / NIC_BYTES_PER_S
    assert t == pytest.approx(expect, rel=1e-9)


@settings(max_examples=15, deadline=None)
@given(lg=st.integers(1, 3), size=sizes)
def test_halving_doubling_all_reduce_closed_form(lg, size):
    """Rabenseifner: 2·lg p·α + 2(p−1)/p·S/B."""
    p = 2**lg
    cluster = cached_cluster(1, p)
    t = both_models(cluster, ideal(), "halving_doubling", req(AR, np.arange(p), size))
    assert t == pytest.approx(2 * lg * ALPHA_S + 2 * (p - 1) / p * size / NVLINK_BYTES_PER_S, rel=1e-9)


@settings(max_examples=15, deadline=None)
@given(hosts=st.integers(2, 4), per=st.integers(2, 4), size=sizes)
def test_hierarchical_all_reduce_closed_form(hosts, per, size):
    """docs/reference.md: RS intra (p1−1)α1 + (p1−1)/p1·S/B1, AR inter on S/p1 2(p2−1)α2 + 2(p2−1)/p2·(S/p1)/B2
    (one ring per rail through its own NIC), AG intra as RS; α1 NVLink, α2 the network's."""
    a1, a2 = 1e-6, 7e-6
    cluster = cached_cluster(hosts, per)
    calib = ideal(per_type={"nvlink4": a1, "pcie5": a1, "ib-ndr": a2})
    t = both_models(cluster, calib, "hierarchical", req(AR, np.arange(hosts * per), size))
    intra = (per - 1) * a1 + (per - 1) / per * size / NVLINK_BYTES_PER_S
    inter = 2 * (hosts - 1) * a2 + 2 * (hosts - 1) / hosts * (size / per) / NIC_BYTES_PER_S
    assert t == pytest.approx(2 * intra + inter, rel=1e-9)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 8), size=sizes)
def test_pairwise_all_to_all_closed_form(n, size):
    """(n−1)α + (n−1)/n·S/B."""
    cluster = cached_cluster(1, n)
    t = both_models(cluster, ideal(), "direct", req(A2A, np.arange(n), size))
    assert t == pytest.approx((n - 1) * ALPHA_S + (n - 1) / n * size / NVLINK_BYTES_PER_S, rel=1e-9)


# ------------------------------------------------------------------------------ conservation
def _run_flow(cluster: Cluster, algorithm: str, requests: list[CollectiveRequest]) -> FlowNetwork:
    env = simpy.Environment()
    net = FlowNetwork(env, PhaseCache(cluster, link_calibration(), algorithm))
    for r in requests:
        net.run(r, lambda: None)
    env.run()
    return net


CONSERVATION_CASES = [
    ("dgx-h100", 2, "auto", AR),
    ("dgx-h100", 2, "hierarchical", AR),
    ("dgx-h100", 2, "direct", A2A),
    ("dgx-h100", 1, "nvls", AR),
    ("dgx-a100-superpod", 2, "ring", AG),  # rail-optimized: PXN hops through a proxy GPU
    ("dgx-a100-superpod", 2, "tree", AR),
]


@pytest.mark.parametrize("topology,nodes,algorithm,kind", CONSERVATION_CASES)
def test_bytes_on_links_are_flow_bytes_times_hops(topology, nodes, algorithm, kind):
    """Σ link bytes = Σ flow bytes × hops, link by link; and at every node bytes out − bytes in = bytes
    it sends − bytes it receives (every byte sent is received; nothing appears or vanishes en route)."""
    cluster = load_topology(topology, nodes=nodes)
    r = req(kind, np.arange(cluster.num_gpus), 64 * MiB)
    net = _run_flow(cluster, algorithm, [r])
    expect = np.zeros_like(net.link_bytes)
    nodes_n = len(cluster.node_names)
    net_out = np.zeros(nodes_n)
    for p in net.cache.routed(r):
        ph = p.phase
        indptr, links = cluster.router.paths(ph.src, ph.dst)
        np.add.at(expect, links, np.repeat(ph.bytes, np.diff(indptr)))
        net_out += np.bincount(ph.src, weights=ph.bytes, minlength=nodes_n)
        net_out -= np.bincount(ph.dst, weights=ph.bytes, minlength=nodes_n)
    assert net.link_bytes.sum() > 0
    np.testing.assert_allclose(net.link_bytes, expect, rtol=1e-12)
    out = np.bincount(cluster.link_src, weights=net.link_bytes, minlength=nodes_n)
    into = np.bincount(cluster.link_dst, weights=net.link_bytes, minlength=nodes_n)
    np.testing.assert_allclose(out - into, net_out, atol=1e-6 * net.link_bytes.max())


# ------------------------------------------------------------------------------ flow == analytical alone
@pytest.mark.parametrize("algorithm", ["auto", "ring", "tree", "hierarchical", "halving_doubling"])
def test_flow_equals_analytical_without_contention(algorithm):
    """One after the other (never overlapping), every collective takes its analytical time in the flow
    model; their link bytes agree too."""
    cluster = load_topology("dgx-a100", nodes=2)
    requests = [req(AR, np.arange(16), s) for s in (4 * KiB, 3 * MiB, 1 * GiB)]
    requests.append(req(AG, np.arange(16), 256 * MiB))
    env = simpy.Environment()
    cache = PhaseCache(cluster, link_calibration(), algorithm)
    flow, analytical = FlowNetwork(env, cache), AnalyticalNetwork(env, cache)
    for r in requests:
        for model in (flow, analytical):
            start, done = env.now, []
            model.run(r, lambda d=done: d.append(env.now))
            env.run()
            assert done[0] - start == pytest.approx(alone_time(cache.routed(r)), rel=1e-9)
    np.testing.assert_allclose(flow.link_bytes, analytical.link_bytes)


# ------------------------------------------------------------------------------ contention
def bottleneck_cluster(shared_bytes_per_s: float) -> Cluster:
    """Four one-GPU hosts, two on each of two leaves joined by one link narrower than the NICs."""
    g = nx.Graph()
    for leaf in ("leafA", "leafB"):
        g.add_node(leaf, kind="switch", tier=1)
    for h in range(4):
        gpu, nic, leaf = f"h{h}.gpu0", f"h{h}.nic0", "leafA" if h < 2 else "leafB"
        g.add_node(gpu, kind="gpu", gpu_id=h, host=h, local=0, gpu_type="h100-sxm")
        g.add_node(nic, kind="nic", host=h, rail=0)
        g.add_edge(gpu, nic, bandwidth_bytes_per_s=63e9, latency_s=1e-6, link_type="pcie5")
        g.add_edge(nic, leaf, bandwidth_bytes_per_s=50e9, latency_s=1e-7, link_type="ib-ndr")
    g.add_edge("leafA", "leafB", bandwidth_bytes_per_s=shared_bytes_per_s, latency_s=1e-7, link_type="ib-ndr")
    return Cluster("bottleneck", g, (get_gpu("h100-sxm"),) * 4)


@pytest.mark.parametrize("kind,pairs", [(AR, ([0, 2], [1, 3])), (SR, ([0, 2], [1, 3]))])
def test_two_collectives_sharing_a_link_each_get_half(kind, pairs):
    cap = 20e9
    cluster = bottleneck_cluster(cap)
    calib = ideal(alpha_s=0.0)
    size = 1 * GiB
    requests = [req(kind, np.array(p), size) for p in pairs]
    cache = PhaseCache(cluster, calib, "auto")
    alone = [alone_time(cache.routed(r)) for r in requests]
    # one flow of S each way: send/recv, or a 2-member ring all-reduce (2·(n−1)/n·S = S per flow)
    assert alone == pytest.approx([size / cap] * 2, rel=1e-9)
    env = simpy.Environment()
    net = FlowNetwork(env, cache)
    done: list[float] = []
    for r in requests:
        net.run(r, lambda: done.append(env.now))
    env.run()
    assert done == pytest.approx([2 * a for a in alone], rel=1e-9)


def test_oversubscribed_fat_tree_slows_data_parallel_all_reduce():
    """16 DGX H100, tp=8 layout: 8 concurrent DP rings across the hosts, one per rail. Ring edges
    between leaves share 7 uplinks per leaf at 8:1 instead of 32 at 1:1."""
    groups = ParallelPlan(ParallelDims(tp=8, pp=1, dp=16)).groups("dp")
    times = {}
    for topo in ("dgx-h100", "dgx-h100-fat-tree-8to1"):
        cluster = load_topology(topo, nodes=16)
        (row,) = bench(cluster, AR, [int(GiB)], groups=groups, algorithm="ring")
        times[topo] = row.time_s
    assert times["dgx-h100-fat-tree-8to1"] > 1.1 * times["dgx-h100"]


def _step(topology: str) -> tuple[float, float]:
    """(step time, DP communication time) of a small scenario on 16 hosts of ``topology``."""
    raw = {
        "model": "gpt3-1.3b",
        "cluster": {"topology": str(TOPOLOGIES / topology), "nodes": 16},
        "training": {"seq_len": 2048, "global_batch": 128, "micro_batch": 1},
        "parallelism": {"tp": 8, "pp": 1, "zero": 0, "dp_overlap": False},
    }
    report = simulate(scenario_from_dict(raw)).report
    return report.step_time_s, report.comm.dp_s


def test_oversubscription_shows_in_the_step_time():
    full_step, full_dp = _step("dgx-h100.yaml")
    over_step, over_dp = _step("dgx-h100-fat-tree-8to1.yaml")
    assert over_dp > 1.1 * full_dp
    assert over_step - full_step == pytest.approx(over_dp - full_dp, rel=0.25)  # the DP reduction is exposed


def test_a_transfer_finishes_when_the_clock_is_far_past_float_nanoseconds():
    """Issue #12: at a clock of 10^12 s one float step is 1.2e-4 s. A transfer left with a microsecond of
    bytes (float drift of a long run) must end, not reschedule itself at the same instant forever (the
    end-of-phase test used an absolute 1 ns bound; it is now relative to the clock)."""
    cap = 20e9
    cache = PhaseCache(bottleneck_cluster(cap), ideal(alpha_s=0.0), "auto")
    env = simpy.Environment(initial_time=1e12)
    net = FlowNetwork(env, cache)
    done: list[float] = []
    net.run(req(SR, np.array([0, 2]), 1 * GiB), lambda: done.append(env.now))
    while not net._active:  # its latency term, then it enters the fluid
        env.step()
    (tr,) = net._active.values()
    tr.remaining = tr.rate * 1e-6  # 1 µs of bytes left: below the clock's resolution, above 1 ns
    net._on_timer(tr, tr.version)
    for _ in range(1000):  # a bounded number of events: the old test looped here without end
        if done or env.peek() == float("inf"):
            break
        env.step()
    assert len(done) == 1


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**31))
def test_contending_phases_get_the_whole_link_rates_bit_for_bit(seed):
    """The flow model fills contending phases on their shared links only (private links folded into one
    rate cap per phase, copies of a shared column dropped, the alone test on the shared links): the rates
    are those of progressive filling on every link, bit for bit, whether or not the phases fit alone."""
    rng = np.random.default_rng(seed)
    capacity = rng.choice([25e9, 50e9, 300e9], size=60)
    net = FlowNetwork(simpy.Environment(), SimpleNamespace(capacity=capacity))  # type: ignore[arg-type]
    trs = []
    for ident in range(int(rng.integers(2, 9))):
        links = np.sort(rng.choice(60 if ident % 2 else 12, size=int(rng.integers(1, 12)), replace=False))
        load = rng.choice([0.5, 1.0, 2.0], size=links.size) / rng.choice([1.0, 0.93, 0.8])
        alone = float(np.min(capacity[links] / load))
        phase = SimpleNamespace(link_ids=links, load=load, alone_rate=alone, max_flow_bytes=1.0)
        tr = _Transfer((phase,), lambda: None, ident, phase)  # type: ignore[arg-type]
        tr.key = net._key_of(phase)  # type: ignore[arg-type]
        net._link_users[links] += 1
        trs.append(tr)
    assert np.array_equal(net._rates_on_shared_links(trs), net._whole_link_rates(trs))
