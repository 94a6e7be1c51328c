"""Small clusters built directly with networkx (following ``simulator/topology/cluster.py``), and helpers
to account the traffic of collective phases per GPU."""

from __future__ import annotations

from functools import cache

import networkx as nx
import numpy as np

from simulator.hardware.gpu import get_gpu
from simulator.network.phases import Phase
from simulator.topology.cluster import Cluster

NVLINK_BYTES_PER_S = 450e9
PCIE_BYTES_PER_S = 63e9
NIC_BYTES_PER_S = 50e9


def build_cluster(
    hosts: int,
    gpus_per_host: int,
    *,
    nvswitch: bool = True,
    in_switch_reduction: bool = False,
    switches_per_host: int = 1,
    hosts_per_domain: int = 1,
) -> Cluster:
    """H hosts × G GPUs; each host's GPUs on NVSwitch node(s) (or a PCIe switch), one NIC per GPU, all
    NICs on one leaf switch. ``hosts_per_domain`` > 1 puts that many hosts on shared NVSwitch nodes (one
    NVLink domain spanning hosts, as a GB200 NVL72 rack)."""
    g = nx.Graph()
    g.add_node("leaf", kind="switch", tier=1)
    for h in range(hosts):
        if nvswitch:
            for s in range(switches_per_host):
                g.add_node(_nvswitch(h, s, hosts_per_domain), kind="nvswitch", host=h)
        else:
            g.add_node(f"h{h}.pcie", kind="pcie", host=h)
        for local in range(gpus_per_host):
            gpu, nic = f"h{h}.gpu{local}", f"h{h}.nic{local}"
            g.add_node(
                gpu, kind="gpu", gpu_id=h * gpus_per_host + local, host=h, local=local, gpu_type="h100-sxm"
            )
            g.add_node(nic, kind="nic", host=h, rail=local)
            if nvswitch:
                for s in range(switches_per_host):
                    bw = NVLINK_BYTES_PER_S / switches_per_host
                    g.add_edge(
                        gpu,
                        _nvswitch(h, s, hosts_per_domain),
                        bandwidth_bytes_per_s=bw,
                        latency_s=6e-7,
                        link_type="nvlink4",
                    )
            else:
                g.add_edge(
                    gpu,
                    f"h{h}.pcie",
                    bandwidth_bytes_per_s=PCIE_BYTES_PER_S,
                    latency_s=1e-6,
                    link_type="pcie5",
                )
            g.add_edge(gpu, nic, bandwidth_bytes_per_s=PCIE_BYTES_PER_S, latency_s=1e-6, link_type="pcie5")
            g.add_edge(
                nic, "leaf", bandwidth_bytes_per_s=NIC_BYTES_PER_S, latency_s=1.3e-7, link_type="ib-ndr"
            )
    spec = get_gpu("h100-sxm")
    return Cluster(
        name=f"test-{hosts}x{gpus_per_host}",
        graph=g,
        gpu_specs=(spec,) * (hosts * gpus_per_host),
        meta={"nvls": in_switch_reduction},
    )


def _nvswitch(host: int, switch: int, hosts_per_domain: int) -> str:
    return f"h{host}.nvsw{switch}" if hosts_per_domain == 1 else f"d{host // hosts_per_domain}.nvsw{switch}"


@cache
def cached_cluster(hosts: int, gpus_per_host: int, in_switch_reduction: bool = False) -> Cluster:
    """``build_cluster`` memoised for hypothesis tests (clusters are immutable)."""
    return build_cluster(hosts, gpus_per_host, in_switch_reduction=in_switch_reduction)


def gpu_of_node(cluster: Cluster) -> np.ndarray:
    """GPU id of each graph node, -1 for nodes that are not GPUs."""
    out = np.full(len(cluster.node_names), -1, dtype=np.int64)
    out[cluster.gpu_node_index] = np.arange(cluster.num_gpus)
    return out


def traffic(phases: list[Phase], cluster: Cluster) -> tuple[np.ndarray, np.ndarray]:
    """Bytes sent and received by each graph node over all phases."""
    nodes = len(cluster.node_names)
    sent, recv = np.zeros(nodes), np.zeros(nodes)
    for p in phases:
        sent += np.bincount(p.src, weights=p.bytes, minlength=nodes)
        recv += np.bincount(p.dst, weights=p.bytes, minlength=nodes)
    return sent, recv


def gpu_traffic(phases: list[Phase], cluster: Cluster) -> tuple[np.ndarray, np.ndarray]:
    """Bytes sent and received by each GPU (by GPU id) over all phases."""
    sent, recv = traffic(phases, cluster)
    node = cluster.gpu_node_index
    return sent[node], recv[node]
