"""Hierarchical (two-level) collectives over islands (hosts or NVLink domains) of p1 GPUs, p2 islands.

All-reduce: ring reduce-scatter inside each island, ring all-reduce of the S/p1 shard among the GPUs with
the same position in their islands (p1 concurrent inter-island rings, each through its own NIC), ring
all-gather inside each island. Cost (docs/reference.md, after Thakur et al. 2005 applied per level):
(p1-1)α1 + (p1-1)/p1·S/B1  +  2(p2-1)α2 + 2(p2-1)/p2·(S/p1)/B2  +  (p1-1)α1 + (p1-1)/p1·S/B1.
Reduce-scatter is the first two levels with a reduce-scatter across islands; all-gather the reverse.
Every rank sends 2(n-1)/n·S (all-reduce) or (n-1)/n·S (the others), as a flat ring would, but only
(p2-1)/p2·S/p1 per level-2 round crosses the scale-out network per GPU.

Needs every instance to span the same number of islands with the same number of members in each.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from simulator.network.collectives._common import (
    as_groups,
    gpu_phase,
    island_blocks,
    ring_flows,
    topology_sorted,
)
from simulator.network.collectives.base import CollectiveAlgorithm
from simulator.network.phases import Phase
from simulator.registry import ALGORITHMS
from simulator.topology.cluster import Cluster
from simulator.workload.ops import CollectiveKind

AR, RS, AG = CollectiveKind.ALL_REDUCE, CollectiveKind.REDUCE_SCATTER, CollectiveKind.ALL_GATHER


@ALGORITHMS.register("hierarchical")
class Hierarchical(CollectiveAlgorithm):
    """Intra-island ring, inter-island ring on the shard, intra-island ring."""

    name = "hierarchical"
    kinds = frozenset({AR, RS, AG})
    auto_kinds: ClassVar[frozenset[CollectiveKind] | None] = frozenset()  # not an NCCL algorithm

    def supports(self, kind: CollectiveKind, groups: np.ndarray, cluster: Cluster) -> bool:
        """Supported when all instances have the same number of members on the same number of islands."""
        if kind not in self.kinds:
            return False
        g = as_groups(groups, cluster)
        return g.shape[1] < 2 or island_blocks(topology_sorted(g, cluster), cluster) is not None

    def _phases(
        self, kind: CollectiveKind, groups: np.ndarray, nbytes: float, cluster: Cluster
    ) -> list[Phase]:
        """Up to three phases (levels with a single member are skipped)."""
        blocks = island_blocks(topology_sorted(groups, cluster), cluster)
        assert blocks is not None
        inst, islands, per = blocks.shape
        intra = ("intra-island", blocks.reshape(inst * islands, per))
        inter = ("inter-island", blocks.transpose(0, 2, 1).reshape(inst * per, islands))
        shard = nbytes / per
        if kind == AR:
            plan = [(intra, RS, nbytes), (inter, AR, shard), (intra, AG, nbytes)]
        elif kind == RS:
            plan = [(intra, RS, nbytes), (inter, RS, shard)]
        else:
            plan = [(inter, AG, shard), (intra, AG, nbytes)]
        out = [_ring_phase(rows, k, size, level, cluster) for (level, rows), k, size in plan]
        return [p for p in out if p is not None]


def _ring_phase(
    rows: np.ndarray, kind: CollectiveKind, data_bytes: float, level: str, cluster: Cluster
) -> Phase | None:
    """One ring per row running ``kind`` on ``data_bytes`` per rank; None for rings of one."""
    k = rows.shape[1]
    if k < 2:
        return None
    rounds = 2 if kind == AR else 1
    src, dst, b = ring_flows([rows], rounds * (k - 1) / k * data_bytes)
    label = f"hierarchical {level} ring {kind.value}"
    return gpu_phase(cluster, src, dst, b, rounds * (k - 1), label, "ring")
