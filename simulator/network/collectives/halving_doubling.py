"""Recursive halving and doubling (Thakur, Rabenseifner & Gropp 2005, §4.4-4.5; Rabenseifner 2004).

* reduce-scatter by recursive halving: lg p steps; in step k (k = 1..lg p) rank i exchanges S/2^k with
  rank i XOR p/2^k;
* all-gather by recursive doubling: lg p steps; in step k rank i exchanges 2^(k-1)·S/p with i XOR 2^(k-1);
* all-reduce (Rabenseifner) = the two: 2·lg p steps, 2(p-1)/p·S sent and received per rank.

Each step is one phase (a step cannot start before the data of the previous one has arrived). Ranks are
numbered in topology order, so the short distances stay inside an island. Reduce-scatter and all-gather
need a power of two; all-reduce on other sizes uses the standard fold (MPICH, as in Thakur et al. 2005):
with p' the largest power of two below p and r = p - p', the first 2r ranks pair up, the even one sends
its whole vector to the odd one, the p' survivors run the algorithm, and the odd ranks send the result
back: two more steps of S.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from simulator.network.collectives._common import (
    gpu_phase,
    is_power_of_two,
    topology_sorted,
)
from simulator.network.collectives.base import CollectiveAlgorithm
from simulator.network.phases import Phase
from simulator.registry import ALGORITHMS
from simulator.topology.cluster import Cluster
from simulator.workload.ops import CollectiveKind

_KEY = "ring"  # point-to-point chunks over the same transports as NCCL's ring


@ALGORITHMS.register("halving_doubling")
class HalvingDoubling(CollectiveAlgorithm):
    """Rabenseifner all-reduce; recursive-halving reduce-scatter; recursive-doubling all-gather."""

    name = "halving_doubling"
    kinds = frozenset({CollectiveKind.ALL_REDUCE, CollectiveKind.REDUCE_SCATTER, CollectiveKind.ALL_GATHER})
    auto_kinds: ClassVar[frozenset[CollectiveKind] | None] = frozenset()  # not an NCCL algorithm

    def supports(self, kind: CollectiveKind, groups: np.ndarray, cluster: Cluster) -> bool:
        """All-reduce on any size; reduce-scatter and all-gather on powers of two only."""
        n = np.asarray(groups).shape[-1]
        return kind in self.kinds and (kind == CollectiveKind.ALL_REDUCE or is_power_of_two(n))

    def _phases(
        self, kind: CollectiveKind, groups: np.ndarray, nbytes: float, cluster: Cluster
    ) -> list[Phase]:
        """One phase per exchange step."""
        ranks = topology_sorted(groups, cluster)
        if kind == CollectiveKind.REDUCE_SCATTER:
            return halving_phases(ranks, nbytes, cluster, "reduce_scatter")
        if kind == CollectiveKind.ALL_GATHER:
            return doubling_phases(ranks, nbytes, cluster, "all_gather")
        return _all_reduce(ranks, nbytes, cluster)


def _exchange(ranks: np.ndarray, distance: int) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) of every rank sending to its partner ``i XOR distance``."""
    partner = np.arange(ranks.shape[1]) ^ distance
    return ranks.ravel(), ranks[:, partner].ravel()


def halving_phases(ranks: np.ndarray, nbytes: float, cluster: Cluster, what: str) -> list[Phase]:
    """Recursive-halving reduce-scatter of an S-byte vector over the power-of-two columns of ``ranks``."""
    p = ranks.shape[1]
    out = []
    for k in range(1, p.bit_length()):
        src, dst = _exchange(ranks, p >> k)
        label = f"halving_doubling {what}: halving step {k}, distance {p >> k}"
        out.append(gpu_phase(cluster, src, dst, nbytes / 2**k, 1, label, _KEY))
    return out


def doubling_phases(ranks: np.ndarray, nbytes: float, cluster: Cluster, what: str) -> list[Phase]:
    """Recursive-doubling all-gather to an S-byte vector over the power-of-two columns of ``ranks``."""
    p = ranks.shape[1]
    out = []
    for k in range(1, p.bit_length()):
        d = 1 << (k - 1)
        src, dst = _exchange(ranks, d)
        label = f"halving_doubling {what}: doubling step {k}, distance {d}"
        out.append(gpu_phase(cluster, src, dst, nbytes * d / p, 1, label, _KEY))
    return out


def _all_reduce(ranks: np.ndarray, nbytes: float, cluster: Cluster) -> list[Phase]:
    n = ranks.shape[1]
    core_size = 1 << (n.bit_length() - 1)
    extra = n - core_size
    if extra == 0:
        core = ranks
    else:
        evens, odds = ranks[:, 0 : 2 * extra : 2], ranks[:, 1 : 2 * extra : 2]
        core = np.concatenate([odds, ranks[:, 2 * extra :]], axis=1)
    out = halving_phases(core, nbytes, cluster, "all_reduce")
    out += doubling_phases(core, nbytes, cluster, "all_reduce")
    if extra:
        fold = gpu_phase(cluster, evens, odds, nbytes, 1, "halving_doubling all_reduce: fold", _KEY)
        unfold = gpu_phase(cluster, odds, evens, nbytes, 1, "halving_doubling all_reduce: unfold", _KEY)
        out = [fold, *out, unfold]
    return out
