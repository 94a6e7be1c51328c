"""Point-to-point transfer (``send_recv``): one flow of S bytes from ``groups[:, 0]`` to ``groups[:, 1]``,
as an NCCL send/recv pair (pipeline-parallel activations, ring-attention blocks)."""

from __future__ import annotations

import numpy as np

from simulator.network.collectives._common import gpu_phase
from simulator.network.collectives.base import CollectiveAlgorithm
from simulator.network.phases import Phase
from simulator.registry import ALGORITHMS
from simulator.topology.cluster import Cluster
from simulator.workload.ops import CollectiveKind


@ALGORITHMS.register("p2p")
class PointToPoint(CollectiveAlgorithm):
    """Send/receive between the two members of each instance."""

    name = "p2p"
    kinds = frozenset({CollectiveKind.SEND_RECV})

    def supports(self, kind: CollectiveKind, groups: np.ndarray, cluster: Cluster) -> bool:
        """Send/receive between exactly two members (sender first)."""
        return kind in self.kinds and np.asarray(groups).shape[-1] == 2

    def _phases(
        self, kind: CollectiveKind, groups: np.ndarray, nbytes: float, cluster: Cluster
    ) -> list[Phase]:
        """One phase, one flow per instance."""
        return [gpu_phase(cluster, groups[:, 0], groups[:, 1], nbytes, 1, "p2p send_recv", "p2p")]
