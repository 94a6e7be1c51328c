"""Helpers shared by the collective algorithms.

* group validation (``as_groups``) and the topology-aware rank order NCCL-like algorithms use: members
  sorted by (NVLink island, host, local index), so that neighbours in a ring or chain share an island;
* ring channels (NCCL: one ring per channel, each leaving every host through a different GPU and NIC);
* the double binary tree of NCCL (``src/graph/trees.cc``, after Sanders, Speck & Träff 2009);
* packing flows between GPUs into a ``Phase`` between graph nodes.

Everything is vectorised over the ``[instances, members]`` group array.
"""

from __future__ import annotations

import weakref

import numpy as np

from simulator.network.collectives.base import CollectiveAlgorithm
from simulator.network.phases import Phase
from simulator.topology.cluster import Cluster
from simulator.workload.ops import CollectiveKind


def as_groups(groups: np.ndarray, cluster: Cluster) -> np.ndarray:
    """``groups`` as a 2-D ``[instances, members]`` int64 array of distinct, valid GPU ids."""
    arr = np.asarray(groups, dtype=np.int64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"groups must be [instances, members], got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= cluster.num_gpus):
        raise ValueError(f"group member out of range 0..{cluster.num_gpus - 1}")
    if arr.shape[1] > 1:
        srt = np.sort(arr, axis=1)
        if (srt[:, 1:] == srt[:, :-1]).any():
            raise ValueError("a GPU appears twice in one group")
    return arr


# Per-cluster arrays every collective needs (computed once per cluster: sorting 16,384+ GPUs per routed
# collective was a fifth of a 16,384-GPU step). Weak keys: a cluster's entries go with it.
_ISLAND: weakref.WeakKeyDictionary[Cluster, np.ndarray] = weakref.WeakKeyDictionary()
_TOPOLOGY_RANK: weakref.WeakKeyDictionary[Cluster, np.ndarray] = weakref.WeakKeyDictionary()


def island_of_gpu(cluster: Cluster) -> np.ndarray:
    """Scale-up island of each GPU: its NVLink domain, or its host when it has no NVLink peer."""
    hit = _ISLAND.get(cluster)
    if hit is None:
        dom = cluster.nvlink_domain_of_gpu
        alone = np.bincount(dom)[dom] == 1
        key = np.where(alone, dom.max() + 1 + cluster.host_of_gpu, dom)
        hit = _ISLAND[cluster] = np.unique(key, return_inverse=True)[1].astype(np.int64)
        hit.flags.writeable = False
    return hit


def _topology_rank(cluster: Cluster) -> np.ndarray:
    """Position of each GPU in the (island, host, local index) order."""
    hit = _TOPOLOGY_RANK.get(cluster)
    if hit is None:
        order = np.lexsort((cluster.local_of_gpu, cluster.host_of_gpu, island_of_gpu(cluster)))
        hit = np.empty_like(order)
        hit[order] = np.arange(order.size)
        hit.flags.writeable = False
        _TOPOLOGY_RANK[cluster] = hit
    return hit


def topology_sorted(groups: np.ndarray, cluster: Cluster) -> np.ndarray:
    """Each row's members reordered by (island, host, local index): the order NCCL-like rings follow."""
    rank = _topology_rank(cluster)
    idx = np.argsort(rank[groups], axis=1, kind="stable")
    return np.take_along_axis(groups, idx, axis=1)


def island_blocks(sorted_groups: np.ndarray, cluster: Cluster) -> np.ndarray | None:
    """``[instances, islands, per_island]`` view of topology-sorted groups, or None if not uniform.

    Uniform means every instance spans the same number of islands with the same number of members in
    each (the usual case: a data-parallel group of 16 hosts × 8 GPUs, a tensor-parallel group of 8).
    """
    inst, n = sorted_groups.shape
    if inst == 0 or n == 0:
        return None
    isl = island_of_gpu(cluster)[sorted_groups]
    starts = np.ones((inst, n), dtype=bool)
    starts[:, 1:] = isl[:, 1:] != isl[:, :-1]
    count = starts.sum(axis=1)
    islands = int(count[0])
    if (count != islands).any() or n % islands:
        return None
    per = n // islands
    blocks = isl.reshape(inst, islands, per)
    if not (blocks == blocks[:, :, :1]).all():
        return None
    return sorted_groups.reshape(inst, islands, per)


def island_classes(sorted_groups: np.ndarray, cluster: Cluster) -> list[tuple[np.ndarray, np.ndarray]]:
    """Instances grouped by shape: (row indices, ``[rows, islands, per_island]`` blocks) per class.

    Rows spread unevenly over islands form one class with blocks ``[rows, members, 1]`` (every member
    treated as its own island), so that an instance's flows never depend on the other instances.
    """
    inst, n = sorted_groups.shape
    isl = island_of_gpu(cluster)[sorted_groups]
    count = 1 + (isl[:, 1:] != isl[:, :-1]).sum(axis=1)
    out, uneven = [], []
    for islands in np.unique(count).tolist():
        rows = np.flatnonzero(count == islands)
        if n % islands:
            uneven.append(rows)
            continue
        per = n // islands
        b = isl[rows].reshape(rows.size, islands, per)
        ok = (b == b[:, :, :1]).all(axis=(1, 2))
        if ok.any():
            out.append((rows[ok], sorted_groups[rows[ok]].reshape(-1, islands, per)))
        uneven.append(rows[~ok])
    rest = np.concatenate(uneven) if uneven else np.zeros(0, dtype=np.int64)
    if rest.size:
        out.append((rest, sorted_groups[rest][:, :, None]))
    return out


def ring_orders(blocks: np.ndarray) -> list[np.ndarray]:
    """Ring orders of ``[instances, islands, per_island]`` blocks, one ``[instances, members]`` per channel.

    As NCCL does on multi-node jobs, a group with several members per island over several islands gets
    one channel per member of an island: channel c rotates every island's local order by c, so each
    channel enters and leaves every island through a different GPU (and NIC). Otherwise one ring.
    """
    inst, islands, per = blocks.shape
    if islands == 1 or per == 1:
        return [blocks.reshape(inst, islands * per)]
    return [np.roll(blocks, -c, axis=2).reshape(inst, islands * per) for c in range(per)]


def ring_edges(order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(src, dst) GPU ids of the directed ring through each row of ``order``, row by row."""
    return order.ravel(), np.roll(order, -1, axis=1).ravel()


def ring_flows(orders: list[np.ndarray], bytes_per_flow: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flows of rings over every channel in ``orders``, each carrying ``bytes_per_flow``."""
    edges = [ring_edges(o) for o in orders]
    src = np.concatenate([e[0] for e in edges])
    dst = np.concatenate([e[1] for e in edges])
    return src, dst, np.full(src.size, float(bytes_per_flow))


def merge_flows(
    src: np.ndarray, dst: np.ndarray, nbytes: np.ndarray, num_gpus: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flows with the same (src, dst) summed into one; they share one path and move together."""
    if src.size == 0:
        return src, dst, nbytes
    key = src * num_gpus + dst
    uniq, inv = np.unique(key, return_inverse=True)
    return uniq // num_gpus, uniq % num_gpus, np.bincount(inv, weights=nbytes, minlength=uniq.size)


def gpu_phase(
    cluster: Cluster,
    src_gpu: np.ndarray,
    dst_gpu: np.ndarray,
    nbytes: np.ndarray | float,
    steps: int,
    label: str,
    efficiency_key: str,
) -> Phase:
    """A phase of flows between GPUs, expressed between their graph nodes."""
    node = cluster.gpu_node_index
    src_gpu = np.asarray(src_gpu, dtype=np.int64).ravel()
    flow_bytes = np.broadcast_to(np.asarray(nbytes, dtype=np.float64), src_gpu.shape).copy()
    return Phase(
        src=node[src_gpu],
        dst=node[np.asarray(dst_gpu, dtype=np.int64).ravel()],
        bytes=flow_bytes,
        steps=int(steps),
        label=label,
        efficiency_key=efficiency_key,
    )


def gather_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for every (s, n), vectorised."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - offsets, lengths) + np.arange(total)


# ---- NCCL double binary tree (src/graph/trees.cc: ncclGetBtree, ncclGetDtree) ----


def btree_parents(n: int) -> np.ndarray:
    """Parent of each rank in NCCL's binary tree rooted at 0 (-1 for the root).

    Rank r with lowest set bit b hangs under (r ^ b) | 2b, or under r ^ b when that is out of range.
    """
    parent = np.full(n, -1, dtype=np.int64)
    if n <= 1:
        return parent
    r = np.arange(1, n, dtype=np.int64)
    bit = r & -r
    up = (r ^ bit) | (bit << 1)
    parent[1:] = np.where(up >= n, r ^ bit, up)
    return parent


def dtree_parents(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Parents in the two complementary trees of NCCL's double binary tree.

    The second tree mirrors the first (r → n-1-r) when n is even and shifts it by one rank when n is
    odd, so that a rank that is a leaf in one tree is an inner node of the other (Sanders et al. 2009).
    """
    p0 = btree_parents(n)
    r = np.arange(n, dtype=np.int64)
    if n % 2 == 1:
        q = p0[(r - 1) % n]
        p1 = np.where(q < 0, -1, (q + 1) % n)
    else:
        q = p0[n - 1 - r]
        p1 = np.where(q < 0, -1, n - 1 - q)
    return p0, p1


def tree_depth(parent: np.ndarray) -> int:
    """Largest number of edges from any node up to its root."""
    cur = np.arange(parent.size, dtype=np.int64)
    depth = 0
    while cur.size:
        cur = parent[cur]
        cur = cur[cur >= 0]
        depth += bool(cur.size)
    return depth


def is_power_of_two(n: int) -> bool:
    """Whether ``n`` is 1, 2, 4, 8 ..."""
    return n >= 1 and n & (n - 1) == 0


def check_supported(
    algo: CollectiveAlgorithm, kind: CollectiveKind, groups: np.ndarray, cluster: Cluster
) -> None:
    """Raise if ``algo`` cannot run ``kind`` on ``groups``: callers must ask ``supports`` first."""
    if not algo.supports(kind, groups, cluster):
        raise ValueError(
            f"collective algorithm {algo.name!r} does not support {kind} on groups of shape {groups.shape}"
        )
