"""Direct (pairwise) exchange: every rank sends its S/n chunk for each peer straight to that peer.

All-to-all as NCCL runs it (grouped ncclSend/ncclRecv to every peer, posted at once; Thakur et al. 2005
count it as the pairwise exchange: (p-1)α + (p-1)/p·S·β). All-gather and reduce-scatter the same way:
each rank sends its S/n shard to (all-gather), or its partial sum of each peer's S/n chunk (reduce-scatter)
to, every other rank. Per rank (n-1)/n·S sent and received; n-1 steps; one phase, since the sends are
independent.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from simulator.network.collectives.base import CollectiveAlgorithm
from simulator.network.phases import Phase
from simulator.registry import ALGORITHMS
from simulator.topology.cluster import Cluster
from simulator.workload.ops import CollectiveKind


@ALGORITHMS.register("direct")
class Direct(CollectiveAlgorithm):
    """Pairwise all-to-all (and direct all-gather / reduce-scatter)."""

    name = "direct"
    kinds = frozenset({CollectiveKind.ALL_TO_ALL, CollectiveKind.ALL_GATHER, CollectiveKind.REDUCE_SCATTER})
    auto_kinds: ClassVar[frozenset[CollectiveKind] | None] = frozenset({CollectiveKind.ALL_TO_ALL})

    def _phases(
        self, kind: CollectiveKind, groups: np.ndarray, nbytes: float, cluster: Cluster
    ) -> list[Phase]:
        """One phase of n(n-1) flows of S/n per instance."""
        inst, n = groups.shape
        a, b = np.nonzero(~np.eye(n, dtype=bool))
        nodes = cluster.gpu_node_index[groups]
        src, dst = nodes[:, a].ravel(), nodes[:, b].ravel()
        flow_bytes = np.full(src.size, nbytes / n)
        return [Phase(src, dst, flow_bytes, steps=n - 1, label=f"direct {kind.value}", efficiency_key="p2p")]
