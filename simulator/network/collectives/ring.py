"""Ring collectives, as NCCL runs them (Thakur, Rabenseifner & Gropp 2005, §4; NCCL ring algorithm).

* reduce-scatter / all-gather: n-1 steps, each rank sends S/n per step to its successor: (n-1)/n·S;
* all-reduce = reduce-scatter then all-gather on the same ring: 2(n-1) steps, 2(n-1)/n·S per rank.
  Both halves are pipelined over the same links in the same direction, so they form one phase;
* broadcast: a pipelined chain from the root along the ring: every rank but the root receives S.

A group with several members per island (host) spread over several islands uses one ring per channel,
each carrying S/channels (see ``ring_orders``).
"""

from __future__ import annotations

import numpy as np

from simulator.network.collectives._common import (
    gpu_phase,
    island_classes,
    merge_flows,
    ring_edges,
    ring_flows,
    ring_orders,
    topology_sorted,
)
from simulator.network.collectives.base import CollectiveAlgorithm
from simulator.network.phases import Phase
from simulator.registry import ALGORITHMS
from simulator.topology.cluster import Cluster
from simulator.workload.ops import CollectiveKind

_ROUNDS = {CollectiveKind.ALL_REDUCE: 2, CollectiveKind.REDUCE_SCATTER: 1, CollectiveKind.ALL_GATHER: 1}


@ALGORITHMS.register("ring")
class Ring(CollectiveAlgorithm):
    """Ring all-reduce, reduce-scatter and all-gather; pipelined-chain broadcast."""

    name = "ring"
    kinds = frozenset({*_ROUNDS, CollectiveKind.BROADCAST})

    def _phases(
        self, kind: CollectiveKind, groups: np.ndarray, nbytes: float, cluster: Cluster
    ) -> list[Phase]:
        """One phase: every channel's ring of every instance at once."""
        inst, n = groups.shape
        srt = topology_sorted(groups, cluster)
        flows, channels = [], []
        for rows, blocks in island_classes(srt, cluster):
            orders = ring_orders(blocks)
            channels.append(len(orders))
            if kind == CollectiveKind.BROADCAST:
                flows.append(_chain_flows(orders, groups[rows, 0], nbytes))
            else:
                flows.append(ring_flows(orders, _ROUNDS[kind] * (n - 1) / n * nbytes / len(orders)))
        src, dst, b = (np.concatenate(f) for f in zip(*flows, strict=True))
        if max(channels) > 1:
            src, dst, b = merge_flows(src, dst, b, cluster.num_gpus)
        steps = n - 1 if kind == CollectiveKind.BROADCAST else _ROUNDS[kind] * (n - 1)
        label = f"ring {kind.value} ({max(channels)} channel{'s' * (max(channels) > 1)})"
        return [gpu_phase(cluster, src, dst, b, steps, label, "ring")]


def _chain_flows(
    orders: list[np.ndarray], root: np.ndarray, nbytes: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ring edges minus the one into the root: a chain from the root; S/channels on each edge."""
    n = orders[0].shape[1]
    root_of_edge = np.repeat(root, n)
    srcs, dsts = [], []
    for order in orders:
        src, dst = ring_edges(order)
        keep = dst != root_of_edge
        srcs.append(src[keep])
        dsts.append(dst[keep])
    src = np.concatenate(srcs)
    return src, np.concatenate(dsts), np.full(src.size, float(nbytes) / len(orders))
