"""Topology files → clusters: graph conventions, datasheet capacities, fat-tree bisection, switch counts
of the NVIDIA reference architectures, and one-line errors for bad files."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import pytest
import yaml

from simulator.errors import ScenarioError
from simulator.hardware.gpu import gpu_catalog
from simulator.topology.cluster import Cluster
from simulator.topology.loader import build_cluster, load_topology, shipped_dir, shipped_topology

TOPOLOGIES = shipped_dir("topologies")
assert TOPOLOGIES is not None
SHIPPED = sorted(p.stem for p in Path(TOPOLOGIES).glob("*.yaml"))
KINDS = {"gpu", "nvswitch", "nic", "switch", "pcie"}


def doc(name: str) -> dict[str, Any]:
    """The raw mapping of a shipped topology file."""
    path = shipped_topology(name)
    assert path is not None
    return yaml.safe_load(path.read_text())


def build(raw: dict[str, Any], **top: Any) -> Cluster:
    """Build a copy of ``raw`` with top-level keys replaced."""
    d = copy.deepcopy(raw)
    d.update(top)
    return build_cluster(d, file="test.yaml")


def edge_bw(c: Cluster, a: str, b: str) -> float:
    """Per-direction capacity of the edge a-b."""
    return float(c.graph.edges[a, b]["bandwidth_bytes_per_s"])


def check_conventions(c: Cluster) -> None:
    """The graph conventions of simulator/topology/cluster.py."""
    g = c.graph
    gpu_ids = []
    for name, d in g.nodes(data=True):
        assert d.get("kind") in KINDS, name
        if d["kind"] == "gpu":
            assert {"gpu_id", "host", "local", "gpu_type"} <= d.keys(), name
            assert c.gpu_specs[d["gpu_id"]].name == d["gpu_type"]
            assert name == f"h{d['host']}/gpu{d['local']}"
            gpu_ids.append(d["gpu_id"])
        elif d["kind"] == "nic":
            assert {"host", "rail"} <= d.keys(), name
        elif d["kind"] == "switch":
            assert int(d["tier"]) >= 1, name
    assert sorted(gpu_ids) == list(range(c.num_gpus)) and c.num_gpus == len(c.gpu_specs)
    for a, b, d in g.edges(data=True):
        assert d["bandwidth_bytes_per_s"] > 0 and d["latency_s"] >= 0, (a, b)
        assert isinstance(d["link_type"], str) and d["link_type"], (a, b)
    assert nx.is_connected(g)
    # every host is one contiguous block of nodes (the router's host templates rely on it)
    hosts = [d.get("host", -1) for _, d in g.nodes(data=True)]
    seen: list[int] = []
    for h in hosts:
        if h >= 0 and (not seen or seen[-1] != h):
            assert h not in seen
            seen.append(h)


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_topology_follows_the_graph_conventions(name: str) -> None:
    raw = doc(name)
    assert raw.get("source"), "every shipped topology names its source"
    c = build_cluster(raw, file=name)
    check_conventions(c)
    assert c.source and c.name == name
    grown = raw.get("host") is not None and raw["fabric"]["builder"] in ("fat_tree", "rail_optimized")
    if grown:  # the same file at a scenario's node count
        check_conventions(build(raw, nodes=40))


def test_shipped_list_is_complete() -> None:
    expected = {
        "dgx-a100", "dgx-h100", "dgx-a100-superpod", "dgx-h100-superpod", "dgx-h100-fat-tree-2to1",
        "dgx-h100-fat-tree-8to1", "dgx1-v100", "hgx-h200", "hgx-b200", "torus-3d-example",
        "explicit-example", "hetero-a100-h100",
    }  # fmt: skip
    assert expected <= set(SHIPPED)


# --------------------------------------------------------------------------------------- datasheets
def test_dgx_a100_host_capacities() -> None:
    c = load_topology("dgx-a100")
    assert c.num_gpus == 8 and c.num_hosts == 1
    for k in range(8):
        # A100 datasheet: NVLink 600 GB/s bidirectional = 300e9 B/s per direction
        assert edge_bw(c, f"h0/gpu{k}", "h0/nvsw") == 300e9
        assert c.graph.edges[f"h0/gpu{k}", "h0/nvsw"]["link_type"] == "nvlink3"
        # HDR 200 Gb/s = 25e9 B/s per direction
        assert edge_bw(c, f"h0/nic{k}", "leaf0") == 25e9
    nics = [n for n, d in c.graph.nodes(data=True) if d["kind"] == "nic"]
    assert len(nics) == 8
    assert c.meta["nvls"] is False
    assert c.gpu_specs[0].name == "a100-sxm-80gb"


def test_dgx_h100_host_capacities_and_nvls() -> None:
    c = load_topology("dgx-h100", nodes=2)
    assert c.num_gpus == 16
    assert all(edge_bw(c, f"h1/gpu{k}", "h1/nvsw") == 450e9 for k in range(8))
    assert all(edge_bw(c, f"h1/gpu{k}", f"h1/nic{k}") == 63e9 for k in range(8))  # PCIe Gen5 x16
    nic_links = [d for a, b, d in c.graph.edges(data=True) if "nic" in a + b and d["link_type"] == "ib-ndr"]
    assert len(nic_links) == 16 and all(d["bandwidth_bytes_per_s"] == 50e9 for d in nic_links)
    assert c.meta["nvls"] is True  # NVLink SHARP from the third-generation NVSwitch


def test_dgx1_v100_cube_mesh() -> None:
    c = load_topology("dgx1-v100")
    nvlink = nx.Graph([(a, b, d) for a, b, d in c.graph.edges(data=True) if d["link_type"] == "nvlink2"])
    for k in range(8):  # six NVLink2 links of 25 GB/s per GPU (DGX-1V whitepaper)
        assert sum(d["bandwidth_bytes_per_s"] for *_, d in nvlink.edges(f"h0/gpu{k}", data=True)) == 150e9
    assert edge_bw(c, "h0/gpu0", "h0/gpu3") == 50e9  # a doubled link
    assert not nvlink.has_edge("h0/gpu0", "h0/gpu5")
    assert nx.diameter(nvlink) == 2  # every pair within two NVLink hops
    # every two GPUs share a PCIe switch with one NIC (DGX best practices, DGX-1 networking)
    for k in range(8):
        switch = next(n for n in c.graph.neighbors(f"h0/gpu{k}") if c.graph.nodes[n]["kind"] == "pcie")
        assert c.graph.has_edge(switch, f"h0/nic{k // 2}")


def test_heterogeneous_cluster_has_both_gpu_types() -> None:
    c = load_topology("hetero-a100-h100")
    names = {s.name for s in c.gpu_specs}
    assert names == {"a100-sxm-80gb", "h100-sxm"}
    assert c.num_hosts == 24 and c.num_gpus == 192
    assert c.gpu_specs[0].name == "a100-sxm-80gb" and c.gpu_specs[-1].name == "h100-sxm"
    a100_nic = next(d for a, b, d in c.graph.edges("h0/nic0", data=True) if d["link_type"].startswith("ib"))
    h100_nic = next(d for a, b, d in c.graph.edges("h23/nic0", data=True) if d["link_type"].startswith("ib"))
    assert a100_nic["bandwidth_bytes_per_s"] == 25e9 and h100_nic["bandwidth_bytes_per_s"] == 50e9
    groups = c.meta["host_groups"]
    assert [g["hosts"] for g in groups] == [[0, 16], [16, 24]]
    assert [g["nvls"] for g in groups] == [False, True] and c.meta["nvls"] is False


def test_torus_neighbours() -> None:
    c = load_topology("torus-3d-example")
    dims = c.meta["dims"]
    assert dims == [4, 4, 4] and c.num_gpus == 64
    for name, d in c.graph.nodes(data=True):
        assert c.graph.degree(name) == 2 * len(dims)
        here = np.array(np.unravel_index(d["gpu_id"], dims))
        for nb in c.graph.neighbors(name):
            there = np.array(np.unravel_index(c.graph.nodes[nb]["gpu_id"], dims))
            delta = np.minimum((here - there) % 4, (there - here) % 4)
            assert sorted(delta) == [0, 0, 1]  # one step along exactly one dimension (wrapping)


def test_torus_dimension_of_two_doubles_the_link() -> None:
    raw = doc("torus-3d-example")
    raw["fabric"]["dims"] = [2, 4, 8]
    c = build(raw)
    assert c.graph.degree("h0/gpu0") == 5  # the two x-neighbours are one chip
    bw = sorted(d["bandwidth_bytes_per_s"] for *_, d in c.graph.edges("h0/gpu0", data=True))
    assert bw == [50e9] * 4 + [100e9]


def test_explicit_example_is_what_it_lists() -> None:
    raw = doc("explicit-example")
    c = build_cluster(raw, file="explicit-example.yaml")
    assert c.graph.has_edge("h1/nic5", "leaf1")
    assert edge_bw(c, "leaf0", "spine1") == 4 * 50e9  # count: 4 parallel cables
    assert c.meta["tiers"] == 2


# ------------------------------------------------------------------------------------------- fabrics
def small_fat_tree(hosts: int, radix: int, r: float, tiers: int | str = "auto", nics: int = 8) -> Cluster:
    """Hosts of ``nics`` GPUs and NICs at 25 GB/s on a fat-tree."""
    raw = {
        "nodes": hosts,
        "host": {
            "builder": "nvswitch", "gpu": "a100-sxm-80gb", "gpus": nics, "nvlink_gbps": 300,
            "nvlink_type": "nvlink3", "nics": nics, "nic_gbps": 25, "nic_type": "ib-hdr", "pcie_gbps": 31.5,
        },
        "fabric": {
            "builder": "fat_tree", "tiers": tiers, "radix": radix, "oversubscription": r, "link_gbps": 25,
            "link_type": "ib-hdr",
        },
    }  # fmt: skip
    return build_cluster(raw, file="fat-tree.yaml")


def half_cut_bytes_per_s(c: Cluster) -> float:
    """Max flow from the NICs of the first half of the hosts to those of the second half."""
    g = nx.DiGraph()
    for a, b, d in c.graph.edges(data=True):
        g.add_edge(a, b, capacity=d["bandwidth_bytes_per_s"])
        g.add_edge(b, a, capacity=d["bandwidth_bytes_per_s"])
    half = c.num_hosts // 2
    for name, d in c.graph.nodes(data=True):
        if d["kind"] == "nic":
            side = ("S", name) if d["host"] < half else (name, "T")
            g.add_edge(*side, capacity=math.inf)
    return float(nx.maximum_flow_value(g, "S", "T"))


def leaf_uplinks_bytes_per_s(c: Cluster) -> float:
    """Sum over leaves of their uplink capacity."""
    tier = nx.get_node_attributes(c.graph, "tier")
    return sum(
        d["bandwidth_bytes_per_s"]
        for a, b, d in c.graph.edges(data=True)
        if {tier.get(a), tier.get(b)} == {1, 2}
    )


def test_two_tier_full_bisection() -> None:
    c = small_fat_tree(hosts=8, radix=16, r=1.0)
    assert c.meta["tiers"] == 2
    full = 8 * 8 * 25e9 / 2  # hosts · nics · link / 2
    assert half_cut_bytes_per_s(c) == pytest.approx(full)
    assert leaf_uplinks_bytes_per_s(c) == pytest.approx(2 * full)


@pytest.mark.parametrize(("hosts", "radix", "r"), [(8, 24, 2.0), (16, 72, 8.0)])
def test_oversubscribed_fat_tree_has_r_times_less_bisection(hosts: int, radix: int, r: float) -> None:
    c = small_fat_tree(hosts=hosts, radix=radix, r=r)
    assert c.meta["oversubscription"] == r
    full = hosts * 8 * 25e9 / 2
    assert half_cut_bytes_per_s(c) == pytest.approx(full / r)
    assert leaf_uplinks_bytes_per_s(c) == pytest.approx(2 * full / r)


def test_three_tier_full_bisection() -> None:
    c = small_fat_tree(hosts=16, radix=8, r=1.0, nics=4)  # 64 NICs, 16 leaves > radix: pods and cores
    assert c.meta["tiers"] == 3
    assert c.meta["switches"] == {"leaf": 16, "spine": 16, "core": 8}
    assert half_cut_bytes_per_s(c) == pytest.approx(16 * 4 * 25e9 / 2)


def test_switch_counts_match_the_dgx_superpod_reference_architectures() -> None:
    # DGX H100 SuperPOD RA (RA-11333-001) Table 4: 1 SU = 8 leaves + 4 spines; 4 SU (127 nodes) = 32 + 16
    raw = doc("dgx-h100-superpod")
    assert build(raw, nodes=31).meta["switches"] == {"leaf": 8, "spine": 4, "core": 0}
    assert build(raw, nodes=95).meta["switches"] == {"leaf": 24, "spine": 16, "core": 0}
    c = load_topology("dgx-h100-superpod")
    assert c.meta["switches"] == {"leaf": 32, "spine": 16, "core": 0} and c.meta["tiers"] == 2
    # DGX B200 SuperPOD RA: 16 SU = 128 leaves, 128 spines, 64 cores
    assert build(raw, nodes=512).meta["switches"] == {"leaf": 128, "spine": 128, "core": 64}


def test_sixteen_thousand_gpus_in_three_tiers() -> None:
    # DGX B200 SuperPOD RA: 64 SU (2,048 nodes, 16,384 GPUs) = 512 leaves, 512 spines, 256 cores
    c = load_topology("dgx-h100", nodes=2048)
    assert c.num_gpus == 16384 and c.meta["tiers"] == 3
    assert c.meta["switches"] == {"leaf": 512, "spine": 512, "core": 256}


def test_xdr_fabric_cables_128_ports_and_grows_to_three_tiers() -> None:
    # 128 of the Q3400's 144 ports: 64 NIC ports down per leaf (8 hosts), 64 XDR links up; past 128 leaves
    # (1,024 hosts) a core tier: 1,025 hosts = 129 leaves in 3 pods of 64 x 64 spines, 64 groups of 2 cores
    raw = doc("dgx-h100-xdr")
    c = build(raw, nodes=1025)
    assert c.meta["tiers"] == 3 and c.meta["leaf_down_ports"] == 64
    assert c.meta["switches"] == {"leaf": 129, "spine": 192, "core": 128}
    assert edge_bw(c, "h0/nic0", "leaf0") == 50e9  # the NIC's NDR 400 Gb/s, not the port's 800
    assert edge_bw(c, "leaf0", "spine0") == 100e9  # XDR 800 Gb/s


def test_rail_optimized_leaves_hold_one_rail_of_one_scalable_unit() -> None:
    c = load_topology("dgx-h100-superpod", nodes=64)
    for name, d in c.graph.nodes(data=True):
        if d["kind"] == "switch" and d["tier"] == 1:
            nics = [c.graph.nodes[n] for n in c.graph.neighbors(name) if c.graph.nodes[n]["kind"] == "nic"]
            assert len(nics) == 32
            assert {n["rail"] for n in nics} == {d["rail"]}
            assert len({n["host"] // 32 for n in nics}) == 1


def test_single_host_needs_no_spines() -> None:
    c = load_topology("dgx-h100")
    assert c.meta["tiers"] == 1 and c.meta["switches"] == {"leaf": 1, "spine": 0, "core": 0}


def test_scenario_reference_builds(tmp_path: Path) -> None:
    from simulator.scenario import scenario_from_dict

    raw = {
        "model": {"layers": 2, "hidden": 256, "heads": 4, "vocab": 1000},
        "cluster": {"topology": "dgx-h100", "nodes": 4},
        "training": {"seq_len": 128, "global_batch": 32},
    }
    sc = scenario_from_dict(raw, file=str(tmp_path / "s.yaml"), base_dir=tmp_path)
    c = build_cluster(sc.topology, file=sc.topology_file)
    assert c.num_gpus == 32


# ------------------------------------------------------------------------------------------- errors
BAD = [
    (lambda d: d["fabric"].update(builder="nope"), "fabric.builder", "nope"),
    (lambda d: d["host"].update(builder="nope"), "host.builder", "nope"),
    (lambda d: d.update(colour="red"), "colour", "unknown key"),
    (lambda d: d["host"].update(colour="red"), "host.colour", "unknown key"),
    (lambda d: d["fabric"].update(colour="red"), "fabric.colour", "unknown key"),
    (lambda d: d["fabric"].update(tiers=4), "fabric.tiers", "4 is not supported; valid: 2, 3, auto"),
    (lambda d: d["fabric"].update(oversubscription=0), "fabric.oversubscription", "valid: > 0"),
    (lambda d: d["host"].update(nics=3), "host.nics", "3 does not divide gpus=8"),
    (lambda d: d["host"].update(gpu="h900"), "host.gpu", "unknown GPU 'h900'"),
    (lambda d: d["host"].pop("nic_gbps"), "host.nic_gbps", "required"),
    (lambda d: d.update(nodes=0), "nodes", "greater than 0"),
    (lambda d: d["fabric"].update(tiers=2) or d.update(nodes=300), "fabric.tiers", "valid: 3, auto"),
    (lambda d: d["fabric"].update(ecmp="random"), "fabric.ecmp", "'random'"),
    (lambda d: d["host"].update(nvlink_type="xgmi"), "host.nvlink_type", "xgmi"),
    (lambda d: d["fabric"].update(link_type="myfabric"), "fabric.latency_s", "myfabric"),
    (lambda d: d.pop("host"), "host", "exactly one of host"),
    (lambda d: d.update(fabric={"builder": "none"}, nodes=2), "fabric.builder", "2"),
    (lambda d: d["fabric"].update(radix=7), "fabric.radix", "7"),
]


@pytest.mark.parametrize(("mutate", "field", "words"), BAD)
def test_bad_topology_is_a_one_line_error_naming_the_field(mutate: Any, field: str, words: str) -> None:
    raw = doc("dgx-h100")
    mutate(raw)
    with pytest.raises(ScenarioError) as err:
        build_cluster(raw, file="topologies/bad.yaml")
    e = err.value
    assert e.field == field and e.file == "topologies/bad.yaml"
    assert words in str(e) and "\n" not in str(e)
    assert str(e).startswith(f"topologies/bad.yaml: {field}: ")


def test_bad_host_group_and_explicit_errors() -> None:
    raw = doc("hetero-a100-h100")
    raw["host_groups"][1]["host"]["gpus"] = 6
    with pytest.raises(ScenarioError) as err:
        build_cluster(raw, file="h.yaml")
    assert err.value.field == "host_groups[1].host.nics"
    raw = doc("hetero-a100-h100")
    with pytest.raises(ScenarioError) as err:
        build(raw, nodes=30)
    assert err.value.field == "nodes" and "24" in str(err.value)
    raw = doc("explicit-example")
    raw["fabric"]["links"][3]["b"] = "leaf9"
    with pytest.raises(ScenarioError) as err:
        build_cluster(raw, file="e.yaml")
    assert err.value.field == "fabric.links[3].b" and "leaf9" in str(err.value)
    raw = doc("explicit-example")
    del raw["fabric"]["links"][2]["gbps"]
    with pytest.raises(ScenarioError) as err:
        build_cluster(raw, file="e.yaml")
    assert err.value.field == "fabric.links[2].gbps" and "missing" in str(err.value)
    with pytest.raises(ScenarioError) as err:
        load_topology("no-such-topology")
    assert "not found" in str(err.value)
    with pytest.raises(ScenarioError) as err:  # more hosts than the links name: h2 is not connected
        build(doc("explicit-example"), nodes=3)
    assert err.value.field == "fabric" and "not connected" in str(err.value)


def test_torus_size_mismatch_and_cube_mesh_size() -> None:
    with pytest.raises(ScenarioError) as err:
        build(doc("torus-3d-example"), nodes=8)
    assert err.value.field == "fabric.dims"
    raw = doc("dgx1-v100")
    raw["host"]["gpus"] = 4
    with pytest.raises(ScenarioError) as err:
        build_cluster(raw, file="v.yaml")
    assert err.value.field == "host.nvlink_links"


def test_gpu_catalog_has_every_shipped_gpu() -> None:
    for name in SHIPPED:
        raw = doc(name)
        hosts = [raw["host"]] if "host" in raw else [g["host"] for g in raw["host_groups"]]
        assert all(h["gpu"] in gpu_catalog() for h in hosts), name
