"""Link load of one step: the busiest directed links, and the load of each fabric tier.

A fabric question (2:1 oversubscribed leaves, or not?) is about a tier, not about one port: ties between the
equally loaded NVLink ports of a host fill any global top-N list (issue #10, point 2). So the report also
groups links by ``Cluster.link_tier`` (NVLink, host PCIe, NIC–leaf, leaf–spine, spine–core) and gives, per
tier, its aggregate utilisation, its busiest link's utilisation and its busiest links. Utilisation is bytes
moved over capacity × step time: the average load over the step, not the peak of a burst.
"""

from __future__ import annotations

import numpy as np

from simulator.report.schema import LinkUse, TierUse
from simulator.topology.cluster import LINK_TIERS, Cluster


def _use(cluster: Cluster, link_bytes: np.ndarray, util: np.ndarray, i: int) -> LinkUse:
    return LinkUse(
        link=cluster.link_name(i), link_type=cluster.link_type[i], bytes=float(link_bytes[i]),
        utilization=float(util[i]),
    )  # fmt: skip


def busiest_links(cluster: Cluster, link_bytes: np.ndarray, step_s: float, top: int = 10) -> list[LinkUse]:
    """The ``top`` most utilised directed links that carried bytes, most loaded first (ties by link id)."""
    util = link_bytes / (cluster.link_capacity_bytes_per_s * max(step_s, 1e-30))
    order = np.argsort(-util, kind="stable")[:top]
    return [_use(cluster, link_bytes, util, int(i)) for i in order if link_bytes[i] > 0]


def tier_usage(cluster: Cluster, link_bytes: np.ndarray, step_s: float, top: int = 5) -> list[TierUse]:
    """Load per fabric tier, inner to outer (``LINK_TIERS`` order, unknown tiers after, by name)."""
    cap = cluster.link_capacity_bytes_per_s
    span = max(step_s, 1e-30)
    util = link_bytes / (cap * span)
    tiers = np.asarray(cluster.link_tier)
    names = sorted(set(cluster.link_tier), key=lambda t: (LINK_TIERS.index(t) if t in LINK_TIERS else 99, t))
    out = []
    for name in names:
        ids = np.flatnonzero(tiers == name)
        order = ids[np.argsort(-util[ids], kind="stable")]
        out.append(
            TierUse(
                tier=name,
                links=int(ids.size),
                used_links=int((link_bytes[ids] > 0).sum()),
                bytes=float(link_bytes[ids].sum()),
                utilization=float(link_bytes[ids].sum() / (cap[ids].sum() * span)),
                max_utilization=float(util[order[0]]),
                busiest=[_use(cluster, link_bytes, util, int(i)) for i in order[:top] if link_bytes[i] > 0],
            )
        )
    return out


def bottleneck_tier(tiers: list[TierUse]) -> str:
    """The tier whose busiest link is the most utilised (it saturates first); ties go to the outer tier,
    the scarcer and dearer one. ``""`` when no link carried bytes."""
    loaded = [(t.max_utilization, i, t.tier) for i, t in enumerate(tiers) if t.bytes > 0]
    return max(loaded)[2] if loaded else ""
