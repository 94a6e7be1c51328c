"""Routing: every path is a connected walk, host paths prefer NVLink, fabric paths spread by ECMP and
stay rail-aligned on rail-optimized fabrics, and a 16,384-GPU cluster routes fast."""

from __future__ import annotations

import math
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.topology.cluster import Cluster
from simulator.topology.loader import build_cluster, load_topology

ENDPOINT_KINDS = {"gpu", "nic", "nvswitch", "switch"}


def fat_tree(nodes: int, *, tiers: int | str = "auto", ecmp: str = "destination") -> Cluster:
    """DGX H100 hosts on a QM9700 fat-tree."""
    raw = {
        "nodes": nodes,
        "host": {
            "builder": "nvswitch", "gpu": "h100-sxm", "gpus": 8, "nvlink_gbps": 450, "nvlink_type": "nvlink4",
            "nics": 8, "nic_gbps": 50, "nic_type": "ib-ndr", "pcie_gbps": 63, "pcie_type": "pcie5",
        },
        "fabric": {
            "builder": "fat_tree", "tiers": tiers, "radix": 64, "link_gbps": 50, "link_type": "ib-ndr", "ecmp": ecmp,
        },
    }  # fmt: skip
    return build_cluster(raw, file="fat-tree.yaml")


def pcie_cluster() -> Cluster:
    """Two PCIe-only hosts (4 GPUs, 2 NICs, 2 CPUs) on one switch."""
    raw = {
        "nodes": 2,
        "host": {
            "builder": "pcie", "gpu": "a100-sxm-80gb", "gpus": 4, "nics": 2, "nic_gbps": 25, "nic_type": "ib-hdr",
            "pcie_gbps": 31.5, "pcie_type": "pcie4", "cpus": 2, "cpu_link_gbps": 40, "cpu_link_type": "upi",
        },
        "fabric": {"builder": "single_switch", "link_gbps": 25, "link_type": "ib-hdr"},
    }  # fmt: skip
    return build_cluster(raw, file="pcie.yaml")


@cache
def cluster(name: str) -> Cluster:
    """Test clusters by name (built once)."""
    makers = {
        "dgx-a100": lambda: load_topology("dgx-a100", nodes=6),
        "dgx-h100-superpod": lambda: load_topology("dgx-h100-superpod", nodes=40),
        "dgx-a100-superpod": lambda: load_topology("dgx-a100-superpod", nodes=60),
        "dgx1-v100": lambda: load_topology("dgx1-v100", nodes=4),
        "torus": lambda: load_topology("torus-3d-example"),
        "hetero": lambda: load_topology("hetero-a100-h100"),
        "explicit": lambda: load_topology("explicit-example"),
        "fat-tree-3": lambda: fat_tree(16, tiers=3),
        "fat-tree-hash": lambda: fat_tree(16, tiers=3, ecmp="hash"),
        "pcie": pcie_cluster,
        "hgx-b200": lambda: load_topology("hgx-b200", nodes=3),
    }
    return makers[name]()


def assert_walks(c: Cluster, src: np.ndarray, dst: np.ndarray, indptr: np.ndarray, links: np.ndarray) -> None:
    """Each flow's links chain from src to dst without revisiting a node."""
    assert indptr.shape == (src.size + 1,) and indptr[0] == 0 and indptr[-1] == links.size
    for i, (s, d) in enumerate(zip(src, dst, strict=True)):
        path = links[indptr[i] : indptr[i + 1]]
        if s == d:
            assert path.size == 0
            continue
        assert path.size > 0
        a, b = c.link_src[path], c.link_dst[path]
        assert a[0] == s and b[-1] == d
        assert np.array_equal(a[1:], b[:-1])
        nodes = np.concatenate([[s], b])
        assert np.unique(nodes).size == nodes.size, [c.node_names[n] for n in nodes]


def endpoints(c: Cluster) -> np.ndarray:
    """Node indices a flow may start or end at."""
    return np.array([i for i, (_, d) in enumerate(c.graph.nodes(data=True)) if d["kind"] in ENDPOINT_KINDS])


def names(c: Cluster, indptr: np.ndarray, links: np.ndarray, i: int) -> list[str]:
    """Node names along flow i."""
    path = links[indptr[i] : indptr[i + 1]]
    return [c.node_names[c.link_src[path[0]]]] + [c.node_names[k] for k in c.link_dst[path]]


CLUSTERS = [
    "dgx-a100", "dgx-h100-superpod", "dgx-a100-superpod", "dgx1-v100", "torus", "hetero", "explicit",
    "fat-tree-3", "fat-tree-hash", "pcie", "hgx-b200",
]  # fmt: skip


@pytest.mark.parametrize("name", CLUSTERS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_path_is_a_connected_walk(name: str, data: st.DataObject) -> None:
    c = cluster(name)
    ends = endpoints(c)
    n = data.draw(st.integers(1, 40))
    pick = st.lists(st.integers(0, ends.size - 1), min_size=n, max_size=n)
    src, dst = ends[data.draw(pick)], ends[data.draw(pick)]
    salt = np.array(data.draw(st.lists(st.integers(0, 7), min_size=n, max_size=n)))
    indptr, links = c.router.paths(src, dst, salt)
    assert_walks(c, src, dst, indptr, links)


@pytest.mark.parametrize("name", CLUSTERS)
def test_all_gpu_pairs_route(name: str) -> None:
    c = cluster(name)
    gpus = np.arange(min(c.num_gpus, 48))
    src, dst = np.repeat(gpus, gpus.size), np.tile(gpus, gpus.size)
    idx = c.gpu_node_index
    indptr, links = c.router.paths(idx[src], idx[dst])
    assert_walks(c, idx[src], idx[dst], indptr, links)


# ------------------------------------------------------------------------------------------ in a host
def test_nvswitch_host_paths_are_two_nvlink_hops() -> None:
    c = cluster("dgx-a100")
    src, dst = np.repeat(np.arange(8), 8), np.tile(np.arange(8), 8)
    indptr, links = c.router.gpu_paths(src, dst)
    for i in range(64):
        path = links[indptr[i] : indptr[i + 1]]
        if src[i] == dst[i]:
            continue
        assert [c.link_type[k] for k in path] == ["nvlink3", "nvlink3"]
        assert c.node_names[c.link_dst[path[0]]] == "h0/nvsw"


def test_cube_mesh_prefers_direct_then_two_nvlink_hops() -> None:
    c = cluster("dgx1-v100")
    direct = {(a, b) for a, b, _ in _dgx1_links()} | {(b, a) for a, b, _ in _dgx1_links()}
    for s in range(8):
        for d in range(8):
            if s == d:
                continue
            indptr, links = c.router.gpu_paths(np.array([s]), np.array([d]))
            types = [c.link_type[k] for k in links]
            assert types == (["nvlink2"] if (s, d) in direct else ["nvlink2", "nvlink2"]), (s, d, types)


def _dgx1_links() -> tuple[tuple[int, int, int], ...]:
    from simulator.topology.builders.cube_mesh import DGX1_V100_LINKS

    return DGX1_V100_LINKS


def test_pcie_host_goes_through_the_pcie_tree() -> None:
    c = cluster("pcie")
    indptr, links = c.router.gpu_paths(np.array([0, 0]), np.array([1, 3]))
    assert names(c, indptr, links, 0) == ["h0/gpu0", "h0/cpu0", "h0/gpu1"]
    assert names(c, indptr, links, 1) == ["h0/gpu0", "h0/cpu0", "h0/cpu1", "h0/gpu3"]


def test_inter_host_flows_use_their_own_nics_on_a_fat_tree() -> None:
    c = cluster("dgx-a100")
    src, dst = np.arange(8), np.arange(8) + 8 * 3 + 0  # GPU k of host 0 → GPU k of host 3
    dst = (dst + 3) % 8 + 24  # ... GPU (k+3) % 8 of host 3
    indptr, links = c.router.gpu_paths(src, dst)
    for i in range(8):
        path = names(c, indptr, links, i)
        nics = [p for p in path if "/nic" in p]
        assert nics == [f"h0/nic{src[i]}", f"h3/nic{dst[i] - 24}"]
        assert path[1] == "h0/pcie" + str(src[i] // 2)  # DGX A100: 2 GPUs + 2 NICs per PCIe switch


# --------------------------------------------------------------------------------------------- fabric
def spine_of(c: Cluster, indptr: np.ndarray, links: np.ndarray, i: int) -> list[str]:
    """Spine switches a flow crosses."""
    return [p for p in names(c, indptr, links, i) if p.startswith("spine")]


def test_ecmp_spreads_flows_over_all_spines_of_a_pod() -> None:
    c = cluster("fat-tree-3")  # 16 hosts, 4 leaves, one pod of 32 spines
    assert c.meta["tiers"] == 3 and c.meta["switches"]["spine"] == 32
    # GPU j of hosts 0-3 (leaf0) → GPU j of hosts 4-7 (leaf1) and hosts 8-11 (leaf2): 64 flows
    src = np.concatenate([np.arange(32), np.arange(32)])
    dst = np.concatenate([np.arange(32) + 32, np.arange(32) + 64])
    indptr, links = c.router.gpu_paths(src, dst)
    spines = [spine_of(c, indptr, links, i) for i in range(64)]
    assert all(len(s) == 1 for s in spines)
    counts = np.unique([s[0] for s in spines], return_counts=True)[1]
    assert counts.size == 32 and counts.max() <= math.ceil(64 / 32) + 1


def test_hash_ecmp_is_deterministic_and_spreads() -> None:
    c = cluster("fat-tree-hash")
    src = np.tile(np.arange(32), 16)
    dst = 32 + (np.arange(512) * 7) % 96
    salt = np.arange(512) // 32
    first = c.router.gpu_paths(src, dst, salt)
    again = c.router.gpu_paths(src, dst, salt)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    counts = np.unique([spine_of(c, *first, i)[0] for i in range(512)], return_counts=True)[1]
    assert counts.size == 32 and counts.max() <= 3 * 512 / 32


def test_salt_moves_parallel_flows_to_other_spines() -> None:
    c = cluster("fat-tree-3")
    src, dst = np.zeros(8, dtype=np.int64), np.full(8, 40)
    indptr, links = c.router.gpu_paths(src, dst, np.arange(8))
    assert len({spine_of(c, indptr, links, i)[0] for i in range(8)}) == 8


def test_three_tier_paths_cross_cores_between_pods() -> None:
    c = load_topology("dgx-h100", nodes=320)  # 80 leaves: 3 pods
    idx = c.gpu_node_index
    path = c.router.path_nodes(int(idx[0]), int(idx[8 * 300]))
    tiers = [c.graph.nodes[p].get("tier") for p in path if c.graph.nodes[p]["kind"] == "switch"]
    assert tiers == [1, 2, 3, 2, 1]


def test_three_tier_switch_hops_and_one_bfs_per_pod() -> None:
    """GPU to GPU across the 3-tier fat-tree: the same leaf is 1 switch, the same pod 3 (leaf, spine,
    leaf), another pod 5 (up to a core and down), whatever the pair; the twin classes of the core graph
    (leaves of a pod share their spines) need one BFS per pod, not one per destination leaf."""
    c = load_topology("dgx-h100", nodes=320)  # 4 hosts per leaf, 32 leaves per pod: 3 pods
    rng = np.random.default_rng(3)
    src, dst = rng.integers(0, c.num_gpus, 3000), rng.integers(0, c.num_gpus, 3000)
    leaf_s, leaf_d = c.host_of_gpu[src] // 4, c.host_of_gpu[dst] // 4
    other = c.host_of_gpu[src] != c.host_of_gpu[dst]
    indptr, links = c.router.gpu_paths(src[other], dst[other])
    switches = np.array([sum(c.link_tier[k] in ("nic-leaf", "leaf-spine", "spine-core") for k in
                                 links[indptr[i] : indptr[i + 1]]) for i in range(indptr.size - 1)])  # fmt: skip
    same_leaf, same_pod = leaf_s[other] == leaf_d[other], leaf_s[other] // 32 == leaf_d[other] // 32
    expect = np.where(same_leaf, 2, np.where(same_pod, 4, 6))  # links between switches and NICs
    assert np.array_equal(switches, expect)
    assert set(expect) == {2, 4, 6}
    assert c.router._dist.shape[0] == 3


def test_paths_are_deterministic_across_routers() -> None:
    from simulator.topology.routing import Router

    c = cluster("dgx-h100-superpod")
    rng = np.random.default_rng(0)
    src, dst = rng.integers(0, c.num_gpus, 300), rng.integers(0, c.num_gpus, 300)
    a = Router(c).gpu_paths(src, dst)
    b = Router(c).gpu_paths(src, dst)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# ----------------------------------------------------------------------------------------------- rails
def leaf_rails(c: Cluster, indptr: np.ndarray, links: np.ndarray, i: int) -> set[int]:
    """Rails of the leaf switches a flow crosses."""
    return {c.graph.nodes[p]["rail"] for p in names(c, indptr, links, i) if c.graph.nodes[p].get("tier") == 1}


@pytest.mark.parametrize("name", ["dgx-h100-superpod", "dgx-a100-superpod", "hgx-b200"])
def test_rail_optimized_paths_stay_on_the_destination_rail(name: str) -> None:
    c = cluster(name)
    rng = np.random.default_rng(1)
    src, dst = rng.integers(0, c.num_gpus, 400), rng.integers(0, c.num_gpus, 400)
    hosts = c.host_of_gpu
    keep = hosts[src] != hosts[dst]
    src, dst = src[keep], dst[keep]
    indptr, links = c.router.gpu_paths(src, dst)
    local = c.local_of_gpu
    for i in range(src.size):
        assert leaf_rails(c, indptr, links, i) == {int(local[dst[i]])}
        path = names(c, indptr, links, i)
        nics = [p for p in path if "/nic" in p]
        assert nics == [f"h{hosts[src[i]]}/nic{local[dst[i]]}", f"h{hosts[dst[i]]}/nic{local[dst[i]]}"]
        if local[src[i]] != local[dst[i]]:  # PXN: NVLink to the local GPU on the destination's rail first
            assert path[:3] == [
                f"h{hosts[src[i]]}/gpu{local[src[i]]}",
                f"h{hosts[src[i]]}/nvsw",
                f"h{hosts[src[i]]}/gpu{local[dst[i]]}",
            ]


def test_same_rail_in_one_scalable_unit_is_one_switch_hop() -> None:
    c = cluster("dgx-h100-superpod")
    indptr, links = c.router.gpu_paths(np.array([3]), np.array([8 * 20 + 3]))  # hosts 0 and 20, SU 0
    assert names(c, indptr, links, 0) == ["h0/gpu3", "h0/nic3", "leaf3", "h20/nic3", "h20/gpu3"]


# ------------------------------------------------------------------------------------------- endpoints
def test_nic_nvswitch_and_switch_endpoints() -> None:
    c = cluster("dgx-a100")
    i = c.node_index
    r = c.router
    assert r.path_nodes(i["h0/gpu0"], i["h0/nvsw"]) == ["h0/gpu0", "h0/nvsw"]
    assert r.path_nodes(i["h1/nic2"], i["h1/gpu2"]) == ["h1/nic2", "h1/pcie1", "h1/gpu2"]
    path = r.path_nodes(i["h0/gpu5"], i["spine0"])
    assert path[0] == "h0/gpu5" and path[-1] == "spine0" and "h0/nic5" in path
    assert r.path_nodes(i["leaf0"], i["leaf0"]) == ["leaf0"]


def test_torus_paths_are_shortest() -> None:
    c = cluster("torus")
    rng = np.random.default_rng(2)
    src, dst = rng.integers(0, 64, 200), rng.integers(0, 64, 200)
    indptr, links = c.router.gpu_paths(src, dst)
    a = np.array(np.unravel_index(src, (4, 4, 4)))
    b = np.array(np.unravel_index(dst, (4, 4, 4)))
    hops = np.minimum((a - b) % 4, (b - a) % 4).sum(axis=0)
    assert np.array_equal(np.diff(indptr), hops)
    assert all(c.link_type[k] == "ici" for k in links)


# ----------------------------------------------------------------------------------------------- speed
def test_sixteen_thousand_gpus_build_and_route() -> None:
    """16,384 GPUs build and route one flow each (timed in benchmarks/bench_speed.py)."""
    c = load_topology("dgx-h100", nodes=2048)
    src = np.arange(c.num_gpus)
    dst = (src + 8 * 1000) % c.num_gpus  # every flow leaves its host (and most their pod)
    indptr, links = c.router.gpu_paths(src, dst)
    assert c.num_gpus == 16384 and indptr[-1] == links.size
    assert (np.diff(indptr) > 0).all()
