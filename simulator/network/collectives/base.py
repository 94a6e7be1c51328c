"""The collective-algorithm extension point: one subclass per file, registered by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from simulator.network.phases import Phase
from simulator.registry import Registry
from simulator.topology.cluster import Cluster
from simulator.workload.ops import CollectiveKind


class CollectiveAlgorithm(ABC):
    """Decomposes a collective into phases of flows on the cluster graph.

    ``groups`` is an ``[instances, members]`` array of global GPU ids: every row is one process group
    running the same collective at the same time (e.g. the 128 data-parallel rings of a large job);
    all rows' flows go into the same phases so that they contend for the links they share.
    ``nbytes`` is the per-rank buffer size S as nccl-tests defines it.
    """

    name: ClassVar[str]
    kinds: ClassVar[frozenset[CollectiveKind]]

    def supports(self, kind: CollectiveKind, groups: np.ndarray, cluster: Cluster) -> bool:
        """Whether this algorithm can run ``kind`` on these groups (e.g. NVLS needs an NVSwitch)."""
        return kind in self.kinds

    @abstractmethod
    def phases(self, kind: CollectiveKind, groups: np.ndarray, nbytes: float, cluster: Cluster) -> list[Phase]:
        """The phases, in order, of one run of the collective."""


ALGORITHMS: Registry[type[CollectiveAlgorithm]] = Registry("collective algorithm", "simulator.network.collectives")
