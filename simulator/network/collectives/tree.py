"""Double binary tree collectives, as NCCL's tree algorithm (NCCL 2.4+, ``src/graph/trees.cc``;
Sanders, Speck & Träff 2009, "Two-tree algorithms for full bandwidth broadcast, reduction and scan").

All-reduce: two complementary binary trees each carry half the data; every chunk is reduced up the tree
and broadcast back down, pipelined, so both directions run in one phase. As NCCL does, the trees span the
islands (hosts) and the GPUs of an island form a chain under the island's head GPU; a group with several
members per island over several islands uses one channel per member of an island, channel c heading each
island with its c-th GPU; an instance spread unevenly over islands gets a plain double binary tree over
its members. Every edge carries S/2 per tree each way: 2(N-1)·S in total, at most 2S per rank.
Steps: 2 × the tree depth (up, then down).

Broadcast (Sanders et al. 2009, two-tree broadcast): the root sends one half of the data to the root of
each of the two trees spanning the other members, which pipeline it down: every rank receives S.
"""

from __future__ import annotations

import numpy as np

from simulator.network.collectives._common import (
    dtree_parents,
    gpu_phase,
    island_classes,
    merge_flows,
    topology_sorted,
    tree_depth,
)
from simulator.network.collectives.base import CollectiveAlgorithm
from simulator.network.phases import Phase
from simulator.registry import ALGORITHMS
from simulator.topology.cluster import Cluster
from simulator.workload.ops import CollectiveKind


@ALGORITHMS.register("tree")
class DoubleBinaryTree(CollectiveAlgorithm):
    """NCCL-style double binary tree all-reduce, and two-tree broadcast."""

    name = "tree"
    kinds = frozenset({CollectiveKind.ALL_REDUCE, CollectiveKind.BROADCAST})

    def _phases(
        self, kind: CollectiveKind, groups: np.ndarray, nbytes: float, cluster: Cluster
    ) -> list[Phase]:
        """One pipelined phase with every tree edge of every instance and channel."""
        inst, n = groups.shape
        srt = topology_sorted(groups, cluster)
        if kind == CollectiveKind.BROADCAST:
            return [_broadcast_phase(srt, groups[:, 0], nbytes, cluster)]
        return [_all_reduce_phase(srt, nbytes, cluster)]


def chain_tree_parents(island_parent: np.ndarray, per_island: int) -> np.ndarray:
    """Parents on the ``[islands, per_island]`` grid (flattened): a chain in each island under its head
    (position 0), and each head under the head of its parent island."""
    islands = island_parent.size
    idx = np.arange(islands * per_island, dtype=np.int64).reshape(islands, per_island)
    parent = np.empty((islands, per_island), dtype=np.int64)
    parent[:, 1:] = idx[:, :-1]
    parent[:, 0] = np.where(island_parent >= 0, island_parent * per_island, -1)
    return parent.ravel()


def _all_reduce_phase(srt: np.ndarray, nbytes: float, cluster: Cluster) -> Phase:
    srcs, dsts, sizes, depth, most = [], [], [], 0, 1
    for _, blocks in island_classes(srt, cluster):
        inst, islands, per = blocks.shape
        channels = per if islands > 1 and per > 1 else 1
        parents = [chain_tree_parents(p, per) for p in dtree_parents(islands)]
        for c in range(channels):
            gpus = np.roll(blocks, -c, axis=2).reshape(inst, islands * per)
            for parent in parents:
                child = np.flatnonzero(parent >= 0)
                below, above = gpus[:, child].ravel(), gpus[:, parent[child]].ravel()
                srcs += [below, above]  # reduce up, broadcast down
                dsts += [above, below]
                sizes += [np.full(2 * below.size, nbytes / (2 * channels))]
        depth = max(depth, *(tree_depth(p) for p in parents))
        most = max(most, channels)
    src, dst, b = merge_flows(
        np.concatenate(srcs), np.concatenate(dsts), np.concatenate(sizes), cluster.num_gpus
    )
    label = f"tree all_reduce ({most} channel{'s' * (most > 1)})"
    return gpu_phase(cluster, src, dst, b, 2 * depth, label, "tree")


def _broadcast_phase(srt: np.ndarray, root: np.ndarray, nbytes: float, cluster: Cluster) -> Phase:
    inst, n = srt.shape
    others = srt[srt != root[:, None]].reshape(inst, n - 1)
    srcs, dsts = [], []
    trees = dtree_parents(n - 1)
    for parent in trees:
        child = np.flatnonzero(parent >= 0)
        top = np.flatnonzero(parent < 0)
        srcs += [others[:, parent[child]].ravel(), root]
        dsts += [others[:, child].ravel(), others[:, top[0]]]
    src, dst = np.concatenate(srcs), np.concatenate(dsts)
    src, dst, b = merge_flows(src, dst, np.full(src.size, nbytes / 2), cluster.num_gpus)
    depth = 1 + max(tree_depth(p) for p in trees)
    return gpu_phase(cluster, src, dst, b, depth, "tree broadcast (two trees)", "tree")
