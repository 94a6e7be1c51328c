"""Collective algorithms → phases: per-rank traffic against the closed forms of Thakur, Rabenseifner &
Gropp (2005) and NCCL, conservation, step counts, instance independence, channels, NVLS, speed."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from network_fixtures import build_cluster, cached_cluster, gpu_of_node, gpu_traffic, traffic

from simulator.network.collectives._common import btree_parents, dtree_parents, tree_depth
from simulator.network.collectives.base import CollectiveAlgorithm
from simulator.network.phases import Phase
from simulator.registry import ALGORITHMS
from simulator.workload.ops import CollectiveKind

AR = CollectiveKind.ALL_REDUCE
RS = CollectiveKind.REDUCE_SCATTER
AG = CollectiveKind.ALL_GATHER
A2A = CollectiveKind.ALL_TO_ALL
BC = CollectiveKind.BROADCAST
SR = CollectiveKind.SEND_RECV
NAMES = ("ring", "tree", "halving_doubling", "hierarchical", "direct", "nvls", "p2p")
REL = 1e-9


def algo(name: str) -> CollectiveAlgorithm:
    return ALGORITHMS.get(name)()


def steps(phases: list[Phase]) -> int:
    return sum(p.steps for p in phases)


def test_every_algorithm_is_registered():
    assert set(NAMES) <= set(ALGORITHMS.names())
    for name in NAMES:
        assert algo(name).name == name


# ---- per-rank closed forms, hypothesis over layout (hosts × GPUs per host), member order and S ----

layouts = st.tuples(st.integers(1, 4), st.integers(1, 4)).filter(lambda hm: hm[0] * hm[1] >= 2)
pow2_layouts = st.tuples(st.sampled_from([1, 2, 4]), st.sampled_from([1, 2, 4])).filter(
    lambda hm: hm[0] * hm[1] >= 2
)
sizes = st.floats(1.0, 1e10)

# (algorithm, kind) → (per-rank bytes sent = received, as a multiple of S; total steps), n ranks
CLOSED_FORMS = {
    ("ring", AR): (lambda n: 2 * (n - 1) / n, lambda n, h, m: 2 * (n - 1)),
    ("ring", RS): (lambda n: (n - 1) / n, lambda n, h, m: n - 1),
    ("ring", AG): (lambda n: (n - 1) / n, lambda n, h, m: n - 1),
    ("hierarchical", AR): (lambda n: 2 * (n - 1) / n, lambda n, h, m: 2 * (m - 1) + 2 * (h - 1)),
    ("hierarchical", RS): (lambda n: (n - 1) / n, lambda n, h, m: (m - 1) + (h - 1)),
    ("hierarchical", AG): (lambda n: (n - 1) / n, lambda n, h, m: (m - 1) + (h - 1)),
    ("direct", A2A): (lambda n: (n - 1) / n, lambda n, h, m: n - 1),
    ("direct", AG): (lambda n: (n - 1) / n, lambda n, h, m: n - 1),
    ("direct", RS): (lambda n: (n - 1) / n, lambda n, h, m: n - 1),
}
POW2_FORMS = {
    ("halving_doubling", AR): (lambda n: 2 * (n - 1) / n, lambda n: 2 * int(math.log2(n))),
    ("halving_doubling", RS): (lambda n: (n - 1) / n, lambda n: int(math.log2(n))),
    ("halving_doubling", AG): (lambda n: (n - 1) / n, lambda n: int(math.log2(n))),
}


@pytest.mark.parametrize("name,kind", list(CLOSED_FORMS))
@settings(max_examples=25, deadline=None)
@given(hm=layouts, size=sizes, data=st.data())
def test_per_rank_traffic_matches_closed_form(name, kind, hm, size, data):
    hosts, per = hm
    n = hosts * per
    cluster = cached_cluster(hosts, per)
    group = np.array(data.draw(st.permutations(range(n))))[None, :]
    phases = algo(name).phases(kind, group, size, cluster)
    sent, recv = gpu_traffic(phases, cluster)
    volume, nsteps = CLOSED_FORMS[(name, kind)]
    assert sent == pytest.approx(np.full(n, volume(n) * size), rel=REL)
    assert recv == pytest.approx(np.full(n, volume(n) * size), rel=REL)
    assert steps(phases) == nsteps(n, hosts, per)


@pytest.mark.parametrize("name,kind", list(POW2_FORMS))
@settings(max_examples=25, deadline=None)
@given(hm=pow2_layouts, size=sizes, data=st.data())
def test_halving_doubling_matches_closed_form(name, kind, hm, size, data):
    hosts, per = hm
    n = hosts * per
    cluster = cached_cluster(hosts, per)
    group = np.array(data.draw(st.permutations(range(n))))[None, :]
    phases = algo(name).phases(kind, group, size, cluster)
    sent, recv = gpu_traffic(phases, cluster)
    volume, nsteps = POW2_FORMS[(name, kind)]
    assert sent == pytest.approx(np.full(n, volume(n) * size), rel=REL)
    assert recv == pytest.approx(np.full(n, volume(n) * size), rel=REL)
    assert steps(phases) == len(phases) == nsteps(n)


def test_halving_doubling_phase_volumes():
    """Rabenseifner on 8: halving sends S/2, S/4, S/8 at distances 4, 2, 1; doubling the reverse."""
    cluster = cached_cluster(2, 4)
    phases = algo("halving_doubling").phases(AR, np.arange(8)[None], 8.0, cluster)
    assert [float(p.bytes[0]) for p in phases] == [4.0, 2.0, 1.0, 1.0, 2.0, 4.0]
    first = phases[0]
    gpu = gpu_of_node(cluster)
    assert (np.abs(gpu[first.src] - gpu[first.dst]) == 4).all()
    assert not algo("halving_doubling").supports(RS, np.arange(6)[None], cluster)
    assert not algo("halving_doubling").supports(AG, np.arange(6)[None], cluster)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 16).filter(lambda n: n & (n - 1)), size=sizes)
def test_halving_doubling_folds_non_powers_of_two(n, size):
    cluster = cached_cluster(n, 1)
    phases = algo("halving_doubling").phases(AR, np.arange(n)[None], size, cluster)
    core = 1 << (n.bit_length() - 1)
    extra = n - core
    sent, recv = gpu_traffic(phases, cluster)
    assert len(phases) == 2 * int(math.log2(core)) + 2
    assert sent.sum() == pytest.approx(recv.sum(), rel=REL)
    assert sent.sum() == pytest.approx(2 * extra * size + 2 * (core - 1) * size, rel=REL)
    assert sent[0 : 2 * extra : 2] == pytest.approx(np.full(extra, size), rel=REL)  # folded ranks
    assert recv[0 : 2 * extra : 2] == pytest.approx(np.full(extra, size), rel=REL)


# ---- ring broadcast, multi-channel rings ----


@settings(max_examples=30, deadline=None)
@given(hm=layouts, size=sizes, data=st.data())
def test_ring_broadcast_is_a_pipelined_chain(hm, size, data):
    hosts, per = hm
    n = hosts * per
    cluster = cached_cluster(hosts, per)
    group = np.array(data.draw(st.permutations(range(n))))[None, :]
    phases = algo("ring").phases(BC, group, size, cluster)
    sent, recv = gpu_traffic(phases, cluster)
    root = group[0, 0]
    assert sent[root] == pytest.approx(size, rel=REL) and recv[root] == 0
    others = np.setdiff1d(np.arange(n), [root])
    assert recv[others] == pytest.approx(np.full(n - 1, size), rel=REL)
    assert sent.sum() == pytest.approx((n - 1) * size, rel=REL)
    assert steps(phases) == n - 1


def test_multi_channel_ring_spreads_inter_host_traffic_over_every_gpu():
    """2 hosts × 8 GPUs: 8 channels, each leaving a host through a different GPU (and so NIC)."""
    cluster = cached_cluster(2, 8)
    (phase,) = algo("ring").phases(AR, np.arange(16)[None], 1.0, cluster)
    gpu = gpu_of_node(cluster)
    src, dst = gpu[phase.src], gpu[phase.dst]
    host = cluster.host_of_gpu
    inter = host[src] != host[dst]
    for h in range(2):
        out = np.bincount(
            src[inter & (host[src] == h)], weights=phase.bytes[inter & (host[src] == h)], minlength=16
        )
        inn = np.bincount(
            dst[inter & (host[dst] == h)], weights=phase.bytes[inter & (host[dst] == h)], minlength=16
        )
        mine = np.flatnonzero(host == h)
        assert out[mine] == pytest.approx(np.full(8, out.sum() / 8), rel=REL)
        assert inn[mine] == pytest.approx(np.full(8, inn.sum() / 8), rel=REL)
    # each host sends 2(n-1)/n·S across in total (one ring crossing per channel)
    assert phase.bytes[inter].sum() == pytest.approx(2 * 2 * 15 / 16, rel=REL)


def test_one_member_per_host_is_one_ring():
    cluster = cached_cluster(4, 2)
    (phase,) = algo("ring").phases(AR, np.array([[0, 2, 4, 6]]), 1.0, cluster)
    assert phase.num_flows == 4
    assert phase.bytes == pytest.approx(np.full(4, 1.5))


# ---- double binary tree ----


def test_nccl_btree_matches_the_picture_in_trees_cc():
    # 0 - 8; 8 → 4, 12; 4 → 2, 6; 12 → 10, 13; 2 → 1, 3; 6 → 5, 7; 10 → 9, 11
    assert btree_parents(14).tolist() == [-1, 2, 4, 2, 8, 6, 4, 6, 0, 10, 12, 10, 8, 12]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300))
def test_double_tree_is_complementary(n):
    """Over both trees every rank has at most two children (a leaf in one, inner in the other)."""
    p0, p1 = dtree_parents(n)
    for parent in (p0, p1):
        assert (parent < 0).sum() == 1
        assert tree_depth(parent) == (math.ceil(math.log2(n)) if n > 1 else 0)
    children = np.bincount(p0[p0 >= 0], minlength=n) + np.bincount(p1[p1 >= 0], minlength=n)
    assert children.max() <= 2


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 24), size=sizes)
def test_tree_all_reduce_one_gpu_per_host(n, size):
    cluster = cached_cluster(n, 1)
    phases = algo("tree").phases(AR, np.arange(n)[None], size, cluster)
    sent, recv = gpu_traffic(phases, cluster)
    assert sent == pytest.approx(recv, rel=REL)  # every edge carries S/2 up and S/2 down per tree
    assert sent.sum() == pytest.approx(2 * (n - 1) * size, rel=REL)
    assert sent.max() <= 2 * size * (1 + REL)
    assert steps(phases) == 2 * math.ceil(math.log2(n))
    assert phases[0].efficiency_key == "tree"


@settings(max_examples=30, deadline=None)
@given(hm=layouts, size=sizes)
def test_tree_all_reduce_chains_inside_hosts(hm, size):
    hosts, per = hm
    n = hosts * per
    cluster = cached_cluster(hosts, per)
    phases = algo("tree").phases(AR, np.arange(n)[None], size, cluster)
    sent, recv = gpu_traffic(phases, cluster)
    assert sent == pytest.approx(recv, rel=REL)
    assert sent.sum() == pytest.approx(2 * (n - 1) * size, rel=REL)
    assert sent.max() <= 2 * size * (1 + REL)
    depth = math.ceil(math.log2(hosts)) if hosts > 1 else 0
    assert steps(phases) == 2 * (depth + per - 1)


@settings(max_examples=30, deadline=None)
@given(hm=layouts, size=sizes, data=st.data())
def test_tree_broadcast_two_trees(hm, size, data):
    hosts, per = hm
    n = hosts * per
    cluster = cached_cluster(hosts, per)
    group = np.array(data.draw(st.permutations(range(n))))[None, :]
    phases = algo("tree").phases(BC, group, size, cluster)
    sent, recv = gpu_traffic(phases, cluster)
    root = group[0, 0]
    assert recv[root] == 0 and sent[root] == pytest.approx(size, rel=REL)
    others = np.setdiff1d(np.arange(n), [root])
    assert recv[others] == pytest.approx(np.full(n - 1, size), rel=REL)
    assert sent.max() <= size * (1 + REL)
    assert steps(phases) == 1 + (math.ceil(math.log2(n - 1)) if n > 2 else 0)


# ---- hierarchical ----


def test_hierarchical_levels_stay_on_their_links():
    cluster = cached_cluster(4, 8)
    rs, ar, ag = algo("hierarchical").phases(AR, np.arange(32)[None], 8.0, cluster)
    gpu, host = gpu_of_node(cluster), cluster.host_of_gpu
    for phase in (rs, ag):
        assert (host[gpu[phase.src]] == host[gpu[phase.dst]]).all()
        assert phase.bytes == pytest.approx(np.full(32, 7.0))  # (p1-1)/p1·S
    assert (host[gpu[ar.src]] != host[gpu[ar.dst]]).all()
    assert ar.bytes == pytest.approx(np.full(32, 2 * 3 / 4 * 8.0 / 8))  # 2(p2-1)/p2·S/p1
    assert (rs.steps, ar.steps, ag.steps) == (7, 6, 7)


def test_hierarchical_needs_uniform_islands():
    cluster = cached_cluster(2, 4)
    assert not algo("hierarchical").supports(AR, np.array([[0, 1, 2, 4]]), cluster)
    assert algo("hierarchical").supports(AR, np.array([[0, 1, 4, 5]]), cluster)


# ---- NVLS ----


@settings(max_examples=20, deadline=None)
@given(n=st.integers(2, 8), size=sizes)
def test_nvls_per_gpu_link_traffic(n, size):
    cluster = cached_cluster(1, 8, in_switch_reduction=True)
    group = np.arange(n)[None]
    (phase,) = algo("nvls").phases(AR, group, size, cluster)
    sent, recv = gpu_traffic([phase], cluster)
    assert sent[:n] == pytest.approx(np.full(n, size * (n + 1) / n), rel=REL)
    assert recv[:n] == pytest.approx(np.full(n, size * (n + 1) / n), rel=REL)
    switch = cluster.node_index["h0.nvsw0"]
    gpu = gpu_of_node(cluster)
    assert ((phase.src == switch) ^ (phase.dst == switch)).all()
    assert (gpu[np.where(phase.src == switch, phase.dst, phase.src)] >= 0).all()
    assert phase.steps == 2 and phase.efficiency_key == "nvls"


def test_nvls_support():
    nvls = algo("nvls")
    capable = cached_cluster(2, 4, in_switch_reduction=True)
    assert nvls.supports(AR, np.array([[0, 1, 2, 3], [4, 5, 6, 7]]), capable)
    assert not nvls.supports(AR, np.array([[0, 1, 4, 5]]), capable)  # spans two hosts
    assert not nvls.supports(RS, np.arange(4)[None], capable)
    assert not nvls.supports(AR, np.arange(4)[None], cached_cluster(2, 4))  # no SHARP in the switch
    pcie = build_cluster(1, 4, nvswitch=False, in_switch_reduction=True)
    assert not nvls.supports(AR, np.arange(4)[None], pcie)
    with pytest.raises(ValueError):
        nvls.phases(AR, np.array([[0, 1, 4, 5]]), 1.0, capable)


def test_nvls_spreads_over_several_switches_by_bandwidth():
    cluster = build_cluster(1, 4, in_switch_reduction=True, switches_per_host=2)
    (phase,) = algo("nvls").phases(AR, np.arange(4)[None], 4.0, cluster)
    assert phase.num_flows == 16
    assert phase.bytes == pytest.approx(np.full(16, 5.0 / 2))
    assert gpu_traffic([phase], cluster)[0] == pytest.approx(np.full(4, 5.0))


# ---- p2p ----


def test_p2p_one_flow_per_instance():
    cluster = cached_cluster(2, 2)
    (phase,) = algo("p2p").phases(SR, np.array([[0, 2], [3, 1]]), 5.0, cluster)
    gpu = gpu_of_node(cluster)
    assert gpu[phase.src].tolist() == [0, 3] and gpu[phase.dst].tolist() == [2, 1]
    assert phase.bytes.tolist() == [5.0, 5.0] and phase.steps == 1 and phase.efficiency_key == "p2p"
    assert not algo("p2p").supports(SR, np.array([[0, 1, 2]]), cluster)


# ---- properties of every algorithm: conservation, independence of instances ----

SUPPORTED = [(name, kind) for name in NAMES for kind in CollectiveKind if kind in ALGORITHMS.get(name).kinds]


def _instances(name: str, kind: CollectiveKind, rng: np.random.Generator) -> np.ndarray:
    """Disjoint groups on a 4 × 4 cluster, shaped so that every algorithm supports them."""
    if kind == SR:
        return rng.permutation(16).reshape(8, 2)
    if name == "nvls":
        return rng.permuted(np.arange(16).reshape(4, 4), axis=1)[rng.permutation(4)]
    if name in ("hierarchical", "halving_doubling"):  # 2 hosts × 2 GPUs per instance
        hosts = rng.permutation(4).reshape(2, 2)
        locals_ = rng.permutation(4).reshape(2, 2)
        return (hosts[:, :, None] * 4 + locals_[:, None, :]).reshape(2, 4)
    return rng.permutation(16).reshape(4, 4)


@pytest.mark.parametrize("name,kind", SUPPORTED)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_instances_are_independent_and_bytes_conserved(name, kind, seed):
    rng = np.random.default_rng(seed)
    cluster = cached_cluster(4, 4, in_switch_reduction=True)
    groups = _instances(name, kind, rng)
    a = algo(name)
    assert a.supports(kind, groups, cluster)
    phases = a.phases(kind, groups, 3.0, cluster)
    sent, recv = traffic(phases, cluster)
    assert sent.sum() == pytest.approx(recv.sum(), rel=REL)
    gpu = gpu_of_node(cluster)
    inst_of_gpu = np.full(cluster.num_gpus, -1)
    for i, row in enumerate(groups):
        inst_of_gpu[row] = i
    host_of_node = np.array([cluster.graph.nodes[v].get("host", -1) for v in cluster.node_names])
    for p in phases:
        s, d = gpu[p.src], gpu[p.dst]
        both = (s >= 0) & (d >= 0)
        assert (inst_of_gpu[s[both]] == inst_of_gpu[d[both]]).all(), "a flow crosses instances"
        one = ~both  # NVLS: GPU ⇄ its own host's switch
        g = np.where(s >= 0, s, d)[one]
        assert (host_of_node[np.where(s >= 0, p.dst, p.src)[one]] == cluster.host_of_gpu[g]).all()
    # running the instances together moves the same bytes as running them one by one
    alone = sum(gpu_traffic(a.phases(kind, row[None], 3.0, cluster), cluster)[0] for row in groups)
    assert gpu_traffic(phases, cluster)[0] == pytest.approx(alone, rel=REL)


@pytest.mark.parametrize("name", NAMES)
def test_unsupported_kind_raises_and_single_member_is_free(name):
    cluster = cached_cluster(2, 2, in_switch_reduction=True)
    a = algo(name)
    missing = [k for k in CollectiveKind if k not in a.kinds]
    with pytest.raises(ValueError):
        a.phases(missing[0], np.arange(2)[None], 1.0, cluster)
    if name != "p2p":
        assert a.phases(next(iter(a.kinds)), np.array([[3]]), 1.0, cluster) == []


# ---- speed: 16,384 members in 128 instances ----


@pytest.fixture(scope="module")
def big_cluster():
    cluster = build_cluster(2048, 8, in_switch_reduction=True)
    _ = (cluster.gpu_node_index, cluster.link_src, cluster.nvlink_domain_of_gpu, cluster.local_of_gpu)
    return cluster


BIG_LAYOUTS = {
    "one-per-host": np.arange(16384).reshape(128, 128).T.copy(),  # 128 hosts per instance
    "16-hosts-x-8": np.arange(16384).reshape(128, 128),  # multi-channel rings and trees
    "tp8": np.arange(16384).reshape(2048, 8),
}


@pytest.mark.parametrize("layout", list(BIG_LAYOUTS))
def test_phases_for_16384_members_build(big_cluster, layout):
    """Every supported algorithm builds phases for 16,384 members (timed in benchmarks/bench_speed.py)."""
    groups = BIG_LAYOUTS[layout]
    for name, kind in SUPPORTED:
        a = algo(name)
        if kind == SR or not a.supports(kind, groups, big_cluster):
            continue
        assert a.phases(kind, groups, 1e6, big_cluster), f"{name} {kind}: no phases"


def test_nvls_follows_the_host_groups_of_the_topology():
    """NVLS-capable and older NVSwitch hosts in one cluster (``meta["host_groups"]`` as the loader writes)."""
    base = build_cluster(2, 4, in_switch_reduction=True)
    mixed = type(base)(
        name="mixed",
        graph=base.graph,
        gpu_specs=base.gpu_specs,
        meta={
            "nvls": False,
            "host_groups": [{"hosts": [0, 1], "nvls": True}, {"hosts": [1, 2], "nvls": False}],
        },
    )
    assert algo("nvls").supports(AR, np.arange(4)[None], mixed)
    assert not algo("nvls").supports(AR, np.arange(4, 8)[None], mixed)


def test_an_nvlink_domain_spanning_hosts_is_one_island():
    """4 hosts × 4 GPUs on one NVLink domain per 2 hosts (NVL72-like): rings stay single-channel inside
    a domain, hierarchical levels follow domains, NVLS spans the hosts of a domain."""
    cluster = build_cluster(4, 4, in_switch_reduction=True, hosts_per_domain=2)
    (ring,) = algo("ring").phases(AR, np.arange(8)[None], 1.0, cluster)
    assert ring.num_flows == 8  # one ring, no channels
    rs, ar, ag = algo("hierarchical").phases(AR, np.arange(16)[None], 8.0, cluster)
    assert rs.steps == 7 and ar.steps == 2  # 8 GPUs per domain, 2 domains
    assert algo("nvls").supports(AR, np.arange(8)[None], cluster)
    assert not algo("nvls").supports(AR, np.arange(4, 12)[None], cluster)
