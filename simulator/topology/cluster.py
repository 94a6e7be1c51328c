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

from simulator.hardware.gpu import GpuSpec

if TYPE_CHECKING:
    from simulator.topology.routing import Router

# Tiers of the interconnect, inner to outer: scale-up (NVLink, or a torus's inter-chip links), the host's
# PCIe/CPU links, NIC to its leaf switch, leaf to spine, spine to core (the 3-tier fat-tree's top).
LINK_TIERS = ("nvlink", "ici", "pcie", "nic-leaf", "leaf-spine", "spine-core")
_SWITCH_TIER_NAMES = {1: "leaf", 2: "spine", 3: "core"}


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
class Cluster:
    """GPUs, their hosts and the interconnect graph. Immutable once built."""

    name: str
    graph: nx.Graph
    gpu_specs: tuple[GpuSpec, ...]  # indexed by global GPU id
    source: str = ""
    description: str = ""
    meta: dict[str, object] = field(default_factory=dict)  # builder facts (fabric kind, oversubscription ...)

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
    def gpu_node_index(self) -> np.ndarray:
        """Integer node index of each GPU, by global GPU id."""
        idx = np.empty(self.num_gpus, dtype=np.int64)
        for name, data in self.graph.nodes(data=True):
            if data.get("kind") == "gpu":
                idx[data["gpu_id"]] = self.node_index[name]
        return idx

    @property
    def num_gpus(self) -> int:
        """Number of GPUs."""
        return len(self.gpu_specs)

    @cached_property
    def host_of_gpu(self) -> np.ndarray:
        """Host (server) index of each GPU."""
        out = np.empty(self.num_gpus, dtype=np.int64)
        for _, data in self.graph.nodes(data=True):
            if data.get("kind") == "gpu":
                out[data["gpu_id"]] = data["host"]
        return out

    @cached_property
    def local_of_gpu(self) -> np.ndarray:
        """Index of each GPU inside its host."""
        out = np.empty(self.num_gpus, dtype=np.int64)
        for _, data in self.graph.nodes(data=True):
            if data.get("kind") == "gpu":
                out[data["gpu_id"]] = data["local"]
        return out

    @property
    def num_hosts(self) -> int:
        """Number of hosts (servers)."""
        return int(self.host_of_gpu.max()) + 1 if self.num_gpus else 0

    @cached_property
    def nvlink_domain_of_gpu(self) -> np.ndarray:
        """Id of the NVLink (scale-up) domain of each GPU: GPUs joined by NVLink/NVSwitch links alone."""
        scale_up = nx.Graph()
        for u, v, d in self.graph.edges(data=True):
            if str(d.get("link_type", "")).startswith(("nvlink", "ici")):
                scale_up.add_edge(u, v)
        out = np.arange(self.num_gpus, dtype=np.int64) + self.num_gpus  # alone unless linked
        gpu_name = {d["gpu_id"]: n for n, d in self.graph.nodes(data=True) if d.get("kind") == "gpu"}
        comp_of: dict[str, int] = {}
        for i, comp in enumerate(nx.connected_components(scale_up)):
            for n in comp:
                comp_of[n] = i
        for g in range(self.num_gpus):
            if gpu_name[g] in comp_of:
                out[g] = comp_of[gpu_name[g]]
        _, dense = np.unique(out, return_inverse=True)
        return dense.astype(np.int64)

    @cached_property
    def _links(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, ...]]:
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
    def link_tier(self) -> tuple[str, ...]:
        """Fabric tier of each directed link (one of ``LINK_TIERS`` on the shipped builders)."""
        nodes = [self.graph.nodes[n] for n in self.node_names]
        kind = [str(d.get("kind", "")) for d in nodes]
        tier = [int(d.get("tier", 0) or 0) for d in nodes]
        memo: dict[tuple[str, int, str, int, str], str] = {}
        out = []
        for a, b, t in zip(self.link_src.tolist(), self.link_dst.tolist(), self.link_type, strict=True):
            key = (kind[a], tier[a], kind[b], tier[b], t)
            if key not in memo:
                memo[key] = _tier(*key)
            out.append(memo[key])
        return tuple(out)

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
