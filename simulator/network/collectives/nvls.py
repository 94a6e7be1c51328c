"""NVLink SHARP (NVLS) all-reduce: the reduction runs in the NVSwitch (Hopper NVLink4 and later).

Traffic model, from NCCL's NVLS kernel (``src/device/all_reduce.h``, ``RunWorkElement<ncclFuncAllReduce,
..., NCCL_ALGO_NVLS, ...>``: scatter → reduce with ``multimem.ld_reduce`` → broadcast with
``multimem.st`` → gather) and the PTX ISA's ``multimem`` instructions (a load-reduce on a multicast
address reads every GPU's copy and returns the reduction; a store to it writes every GPU's copy). With
rank i owning chunk i (S/n bytes):

* reduce: for each chunk i the switch reads chunk i from all n GPUs (the owner's own copy too), reduces
  it and returns it to GPU i: every GPU sends S up to the switch and receives S/n;
* broadcast: GPU i stores its reduced chunk once (S/n up), the switch writes it to all n GPUs: every
  GPU receives S.

Per GPU: S·(n+1)/n up and S·(n+1)/n down, both directions at once (NCCL runs the stages pipelined on
separate warps), so one phase. Ideal bus bandwidth 2(n-1)/(n+1)·B (700 GB/s on 8 H100 at 450 GB/s per
direction; NCCL measures ≈ 480, which the calibrated "nvls" efficiency absorbs). Latency: a load-reduce
round trip and a store, 2 steps, independent of n.

Supported when the hosts can reduce in the switch (``cluster.meta["nvls"]``, which the topology loader
sets when every host group has NVLink4 or later NVSwitches; per host group in ``meta["host_groups"]``)
and every instance's GPUs are in one NVLink domain, attached to the same NVSwitch node(s). A GPU wired
to several NVSwitch nodes spreads its traffic over them in proportion to bandwidth.
"""

from __future__ import annotations

import numpy as np

from simulator.network.collectives._common import as_groups, gather_ranges
from simulator.network.collectives.base import CollectiveAlgorithm
from simulator.network.phases import Phase
from simulator.registry import ALGORITHMS
from simulator.topology.cluster import Cluster
from simulator.workload.ops import CollectiveKind

NVLS_META_KEY = "nvls"


@ALGORITHMS.register("nvls")
class NvlinkSharp(CollectiveAlgorithm):
    """In-switch all-reduce inside one NVLink domain."""

    name = "nvls"
    kinds = frozenset({CollectiveKind.ALL_REDUCE})

    def supports(self, kind: CollectiveKind, groups: np.ndarray, cluster: Cluster) -> bool:
        """All-reduce of groups inside one SHARP-capable NVSwitch domain."""
        if kind not in self.kinds:
            return False
        g = as_groups(groups, cluster)
        if not nvls_hosts(cluster)[cluster.host_of_gpu[g]].all():
            return False
        if g.shape[1] < 2 or g.shape[0] == 0:
            return True
        dom = cluster.nvlink_domain_of_gpu[g]
        return bool((dom == dom[:, :1]).all()) and switch_attachments(cluster, g) is not None

    def _phases(
        self, kind: CollectiveKind, groups: np.ndarray, nbytes: float, cluster: Cluster
    ) -> list[Phase]:
        """One phase: each GPU ⇄ its NVSwitch(es), S·(n+1)/n each way."""
        inst, n = groups.shape
        att = switch_attachments(cluster, groups)
        assert att is not None
        gpu, switch, share = att
        gpu_node = cluster.gpu_node_index[gpu]
        per_dir = nbytes * (n + 1) / n * share
        return [
            Phase(
                src=np.concatenate([gpu_node, switch]),
                dst=np.concatenate([switch, gpu_node]),
                bytes=np.concatenate([per_dir, per_dir]),
                steps=2,
                label="nvls all_reduce (in-switch reduction)",
                efficiency_key="nvls",
            )
        ]


def nvls_hosts(cluster: Cluster) -> np.ndarray:
    """Whether each host's NVSwitch can reduce in the switch, from the builder facts in ``cluster.meta``."""
    out = np.full(cluster.num_hosts, bool(cluster.meta.get(NVLS_META_KEY, False)))
    groups = cluster.meta.get("host_groups")
    if isinstance(groups, list):
        for grp in groups:
            first, end = grp["hosts"]
            out[first:end] = bool(grp.get(NVLS_META_KEY, False))
    return out


def switch_attachments(
    cluster: Cluster, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For every member's link to an NVSwitch node: (GPU id, switch node index, share of the member's
    NVSwitch bandwidth); None if a member has no NVSwitch or members of an instance differ in theirs."""
    num_nodes = len(cluster.node_names)
    gpu_of_node = np.full(num_nodes, -1, dtype=np.int64)
    gpu_of_node[cluster.gpu_node_index] = np.arange(cluster.num_gpus)
    is_member = np.zeros(num_nodes, dtype=bool)
    is_member[cluster.gpu_node_index[groups.ravel()]] = True
    cand = np.flatnonzero(is_member[cluster.link_src])
    ends = np.unique(cluster.link_dst[cand])
    names, nodes = cluster.node_names, cluster.graph.nodes
    is_switch = np.zeros(num_nodes, dtype=bool)
    is_switch[ends] = [nodes[names[e]].get("kind") == "nvswitch" for e in ends]
    cand = cand[is_switch[cluster.link_dst[cand]]]
    cand = cand[np.argsort(gpu_of_node[cluster.link_src[cand]], kind="stable")]
    owner = gpu_of_node[cluster.link_src[cand]]
    counts = np.bincount(owner, minlength=cluster.num_gpus)
    members = groups.ravel()
    per_member = counts[members]
    if (per_member == 0).any():
        return None
    pos = cand[gather_ranges((np.cumsum(counts) - counts)[members], per_member)]
    entry = np.repeat(np.arange(members.size), per_member)
    switch = cluster.link_dst[pos]
    _, seen = np.unique(entry // groups.shape[1] * num_nodes + switch, return_counts=True)
    if (seen != groups.shape[1]).any():
        return None
    bw = cluster.link_capacity_bytes_per_s[pos]
    return members[entry], switch, bw / np.bincount(entry, weights=bw)[entry]
