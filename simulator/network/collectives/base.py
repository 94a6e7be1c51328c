"""The collective-algorithm extension point: one subclass per file, registered by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import numpy as np

from simulator.network.phases import Phase
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
    # Kinds for which ``network.algorithm: auto`` considers this algorithm. Auto chooses among what NCCL
    # itself runs (ring, tree, NVLS; pairwise all-to-all; send/recv), as its tuner does; other algorithms
    # run when a scenario names them.
    auto_kinds: ClassVar[frozenset[CollectiveKind] | None] = None  # None: every supported kind

    def supports(self, kind: CollectiveKind, groups: np.ndarray, cluster: Cluster) -> bool:
        """Whether this algorithm can run ``kind`` on these groups (e.g. NVLS needs an NVSwitch)."""
        return kind in self.kinds

    def auto_candidate(self, kind: CollectiveKind) -> bool:
        """Whether ``auto`` may pick this algorithm for ``kind``."""
        return self.auto_kinds is None or kind in self.auto_kinds

    def phases(
        self, kind: CollectiveKind, groups: np.ndarray, nbytes: float, cluster: Cluster
    ) -> list[Phase]:
        """The phases, in order, of one run of the collective (none for no instance or one-member groups)."""
        from simulator.network.collectives._common import as_groups, check_supported  # imports this module

        groups = as_groups(groups, cluster)
        check_supported(self, kind, groups, cluster)
        if groups.shape[0] == 0 or groups.shape[1] < 2:
            return []
        return self._phases(kind, groups, nbytes, cluster)

    @abstractmethod
    def _phases(
        self, kind: CollectiveKind, groups: np.ndarray, nbytes: float, cluster: Cluster
    ) -> list[Phase]:
        """The phases of a collective on validated ``[instances >= 1, members >= 2]`` groups."""
