"""The built cluster: GPU specs plus the interconnect as a networkx graph.

Graph conventions (every builder follows them; the network model and the reports rely on them):

* node attribute ``kind``: ``"gpu"``, ``"nvswitch"``, ``"nic"``, ``"switch"`` or ``"pcie"``;
  GPU nodes also carry ``gpu_id`` (global index), ``host``, ``local`` (index in the host) and ``gpu_type``;
  NIC nodes carry ``host`` and ``rail``; fabric switches carry ``tier`` (1 = leaf, 2 = spine, 3 = core).
* an edge is a full-duplex link: ``bandwidth_bytes_per_s`` is the capacity of EACH direction,
  ``latency_s`` the one-way latency, ``link_type`` the hardware kind (``nvlink3``, ``nvlink4``,
  ``pcie4``, ``ib-hdr``, ``ib-ndr`` ...) that selects the calibrated efficiency.

Each link also belongs to a *tier* of the fabric (``link_tier``, derived from its endpoints' kinds and
switch tiers, listed inner to outer in ``LINK_TIERS``), so that reports can say which level of the fabric is
loaded instead of listing the busiest individual ports.

Directed links are numbered once here (``link_*`` arrays) so that routing and max-min sharing can work on
integer arrays instead of the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import networkx as nx
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from simulator.hardware.gpu import GpuSpec

if TYPE_CHECKING:
    from simulator.topology.routing import Router

# Tiers of the interconnect, inner to outer: scale-up (NVLink, or a torus's inter-chip links), the host's
# PCIe/CPU links, NIC to its leaf switch, leaf to spine, spine to core (the 3-tier fat-tree's top).
LINK_TIERS = ("nvlink", "ici", "pcie", "nic-leaf", "leaf-spine", "spine-core")
_SWITCH_TIER_NAMES = {1: "leaf", 2: "spine", 3: "core"}


def _codes(values: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """The distinct strings of ``values`` (first-seen order) and each value's index among them."""
    names = list(dict.fromkeys(values))  # first-seen order
    index = {v: i for i, v in enumerate(names)}
    return names, np.fromiter(map(index.__getitem__, values), dtype=np.int64, count=len(values))


def _tier(kind_a: str, tier_a: int, kind_b: str, tier_b: int, link_type: str) -> str:
    """Fabric tier of a link between nodes of the given kinds (``tier_*``: switch tier, 0 if not a switch)."""
    kinds = {kind_a, kind_b}
    if link_type.startswith("nvlink") and kinds <= {"gpu", "nvswitch"}:
        return "nvlink"
    if link_type == "ici":
        return "ici"
    if "switch" not in kinds:
        return "pcie"  # GPU/NIC/PCIe-switch/CPU links inside a host
    if kinds == {"switch"}:
        lo, hi = sorted((tier_a, tier_b))
        return f"{_SWITCH_TIER_NAMES.get(lo, f'tier{lo}')}-{_SWITCH_TIER_NAMES.get(hi, f'tier{hi}')}"
    return f"nic-{_SWITCH_TIER_NAMES.get(max(tier_a, tier_b), 'switch')}"


@dataclass(frozen=True, eq=False)
class LinkArrays:
    """The directed links of a graph as arrays, in ``Cluster``'s numbering: each edge of
    ``graph.edges(data=True)``, in that order, as its two directions (u → v, then v → u)."""

    src: np.ndarray
    dst: np.ndarray
    capacity_bytes_per_s: np.ndarray
    latency_s: np.ndarray
    link_type: tuple[str, ...]


@dataclass(frozen=True)
class NodeTable:
    """Node attributes as arrays, by node index (-1 where a node lacks one; ``kind`` as in the graph)."""

    kind: tuple[str, ...]
    gpu_id: np.ndarray
    host: np.ndarray
    local: np.ndarray
    rail: np.ndarray
    tier: np.ndarray  # switch tier, 0 for every other node


@dataclass(frozen=True, eq=False)
class Cluster:
    """GPUs, their hosts and the interconnect graph. Immutable once built."""

    name: str
    graph: nx.Graph
    gpu_specs: tuple[GpuSpec, ...]  # indexed by global GPU id
    source: str = ""
    description: str = ""
    meta: dict[str, object] = field(default_factory=dict)  # builder facts (fabric kind, oversubscription ...)
    # the graph's directed links, when whoever built the graph has them as arrays already (the topology
    # loader: reading 650,000 links back out of networkx took 2 s at 65,536 GPUs); None: read from the graph
    link_arrays: LinkArrays | None = None

    # ---- derived indexes (computed once, lazily) ----
    @cached_property
    def node_names(self) -> tuple[str, ...]:
        """Graph nodes in a fixed order; a node's position is its integer index."""
        return tuple(self.graph.nodes)

    @cached_property
    def node_index(self) -> dict[str, int]:
        """Graph node name → integer index."""
        return {n: i for i, n in enumerate(self.node_names)}

    @cached_property
    def nodes(self) -> NodeTable:
        """Every node's kind, GPU id, host, local index, NIC rail and switch tier (one pass over the graph)."""
        n = len(self.node_names)
        kind: list[str] = []
        gpu_id, host, local, rail, tier = (np.full(n, -1, dtype=np.int64) for _ in range(5))
        for i, (_, d) in enumerate(self.graph.nodes(data=True)):
            k = str(d.get("kind", ""))
            kind.append(k)
            host[i] = d.get("host", -1)
            tier[i] = int(d.get("tier", 0) or 0)
            if k == "gpu":
                gpu_id[i], local[i] = d["gpu_id"], d["local"]
            elif k == "nic":
                rail[i] = d.get("rail", 0)
        return NodeTable(tuple(kind), gpu_id, host, local, rail, tier)

    @cached_property
    def gpu_node_index(self) -> np.ndarray:
        """Integer node index of each GPU, by global GPU id."""
        gpu = np.flatnonzero(self.nodes.gpu_id >= 0)
        idx = np.empty(self.num_gpus, dtype=np.int64)
        idx[self.nodes.gpu_id[gpu]] = gpu
        return idx

    @property
    def num_gpus(self) -> int:
        """Number of GPUs."""
        return len(self.gpu_specs)

    @cached_property
    def host_of_gpu(self) -> np.ndarray:
        """Host (server) index of each GPU."""
        return self.nodes.host[self.gpu_node_index]

    @cached_property
    def local_of_gpu(self) -> np.ndarray:
        """Index of each GPU inside its host."""
        return self.nodes.local[self.gpu_node_index]

    @property
    def num_hosts(self) -> int:
        """Number of hosts (servers)."""
        return int(self.host_of_gpu.max()) + 1 if self.num_gpus else 0

    @cached_property
    def nvlink_domain_of_gpu(self) -> np.ndarray:
        """Id of the NVLink (scale-up) domain of each GPU: GPUs joined by NVLink/NVSwitch links alone.

        Ids are dense: domains numbered in the order their first node appears along the graph's NVLink
        edges (``graph.edges`` order, each edge's nodes in turn), then GPUs on no NVLink, by GPU id."""
        # both directions of an edge are consecutive links of one type: every other one is the edge u → v
        types, typ = self.link_type_codes
        up = np.array([t.startswith(("nvlink", "ici")) for t in types], dtype=bool)
        scale_up = np.flatnonzero(up[typ])[::2]
        u, v = self.link_src[scale_up], self.link_dst[scale_up]
        n = len(self.node_names)
        labels = connected_components(coo_matrix((np.ones(u.size), (u, v)), shape=(n, n)), directed=False)[1]
        seen = np.stack([u, v], axis=1).ravel()  # nodes in order of appearance along the edges
        first = np.full(n, seen.size, dtype=np.int64)
        np.minimum.at(first, seen, np.arange(seen.size))
        first_of_label = np.full(labels.max() + 1, seen.size, dtype=np.int64)
        np.minimum.at(first_of_label, labels, first)
        gpus = self.gpu_node_index
        linked = first[gpus] < seen.size
        out = np.where(linked, first_of_label[labels[gpus]], seen.size + np.arange(self.num_gpus))
        _, dense = np.unique(out, return_inverse=True)
        return dense.ravel().astype(np.int64)

    @cached_property
    def _links(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
        if self.link_arrays is not None:
            a = self.link_arrays
            return a.src, a.dst, a.capacity_bytes_per_s, a.latency_s, a.link_type
        src, dst, cap, lat, typ = [], [], [], [], []
        for u, v, d in self.graph.edges(data=True):
            for a, b in ((u, v), (v, u)):
                src.append(self.node_index[a])
                dst.append(self.node_index[b])
                cap.append(float(d["bandwidth_bytes_per_s"]))
                lat.append(float(d.get("latency_s", 0.0)))
                typ.append(str(d.get("link_type", "unknown")))
        return (
            np.asarray(src, dtype=np.int64),
            np.asarray(dst, dtype=np.int64),
            np.asarray(cap, dtype=np.float64),
            np.asarray(lat, dtype=np.float64),
            tuple(typ),
        )

    @property
    def link_src(self) -> np.ndarray:
        """Source node index of each directed link."""
        return self._links[0]

    @property
    def link_dst(self) -> np.ndarray:
        """Destination node index of each directed link."""
        return self._links[1]

    @property
    def link_capacity_bytes_per_s(self) -> np.ndarray:
        """Raw (datasheet) capacity of each directed link."""
        return self._links[2]

    @property
    def link_latency_s(self) -> np.ndarray:
        """One-way latency of each directed link."""
        return self._links[3]

    @property
    def link_type(self) -> tuple[str, ...]:
        """Hardware kind of each directed link."""
        return self._links[4]

    @cached_property
    def link_type_codes(self) -> tuple[tuple[str, ...], np.ndarray]:
        """The distinct link types (in order of first appearance) and each directed link's index among them."""
        names, code = _codes(self.link_type)
        return tuple(names), code

    @cached_property
    def link_tier(self) -> tuple[str, ...]:
        """Fabric tier of each directed link (one of ``LINK_TIERS`` on the shipped builders)."""
        kinds, kind = _codes(self.nodes.kind)
        types, typ = self.link_type_codes
        tier = self.nodes.tier
        a, b = self.link_src, self.link_dst
        if not a.size:
            return ()
        # one code per (kind, tier, kind, tier, type) combination: a fabric has a handful
        cols = np.stack([kind[a], tier[a], kind[b], tier[b], typ], axis=1)
        radix = cols.max(axis=0) + 2  # tier is -1 on no node, 0 off switches
        code = np.ravel_multi_index((cols + 1).T, tuple(radix.tolist()))
        _, first, which = np.unique(code, return_index=True, return_inverse=True)
        combos = cols[first]
        names = [
            _tier(kinds[ka], int(ta), kinds[kb], int(tb), types[t]) for ka, ta, kb, tb, t in combos.tolist()
        ]
        return tuple(names[i] for i in which.ravel().tolist())

    @cached_property
    def link_id(self) -> dict[tuple[int, int], int]:
        """(source node index, destination node index) → directed link id."""
        return {
            (int(a), int(b)): i for i, (a, b) in enumerate(zip(self.link_src, self.link_dst, strict=True))
        }

    @cached_property
    def router(self) -> Router:
        """The cluster's router (built on first use): flow paths as directed link ids."""
        from simulator.topology.routing import Router

        return Router(self)

    def link_name(self, link: int) -> str:
        """Readable ``a -> b`` name of a directed link."""
        return f"{self.node_names[self.link_src[link]]} -> {self.node_names[self.link_dst[link]]}"
