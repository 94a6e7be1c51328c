"""Routing: the directed links each flow crosses, as CSR arrays of ``Cluster.link_id`` numbers.

Rules (deterministic: the same flows always get the same paths):

* Inside a host, the cheapest path that prefers NVLink: GPU ↔ NVSwitch ↔ GPU; on a cube-mesh a direct
  NVLink bundle, else two NVLink hops, else PCIe (through the CPUs). A PCIe or QPI/UPI link costs as
  much as ``_NON_NVLINK_COST`` NVLink hops, and among equal paths the wider links win.
* Between hosts: GPU → its own NIC (PCIe) → fabric → destination NIC → GPU. GPU ``g`` of a host with
  ``G`` GPUs and ``R`` NICs uses the NIC of rail ``g * R // G``. On rail-optimized fabrics, like NCCL's
  PXN, a flow to a GPU on rail ``j`` first moves over NVLink to the local GPU on rail ``j`` (the one with
  the destination's local index when it is on that rail) and leaves through that rail's NIC, so fabric
  paths stay rail-aligned.
* Across the fabric: shortest paths (BFS over the fabric's own links: host-internal links are never
  shortcuts) with ECMP. At each hop with several equal next hops, the choice is digit ``s`` of a flow
  key: ``(key // P_s) % n_s`` with ``P_s`` the product of the earlier choice counts. With
  ``ecmp: destination`` (default) the key is the destination port's rank under its leaf order plus
  ``salt``, which is InfiniBand's destination-based D-mod-k routing (Zahavi, "D-Mod-K routing providing
  non-blocking traffic for shift permutations on real life fat trees", 2010): flows to the distinct NICs
  of one leaf leave a leaf through distinct spines. With ``ecmp: hash`` the key is a SplitMix64 hash of
  (src, dst, salt), like Ethernet 5-tuple ECMP.
* Torus fabrics (``routing: direct``) route every flow by shortest paths over the whole graph.

Speed: host paths are computed once per host *template* (hosts with the same layout) and gathered with
numpy; fabric distances come from ``scipy.sparse.csgraph`` BFS from each destination leaf, cached; the
ECMP walk advances all flows one hop at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components, dijkstra, shortest_path

from simulator.topology.cluster import Cluster

_NON_NVLINK_COST = 1000.0  # one PCIe/QPI hop costs as much as this many NVLink hops
_KIND = {"gpu": 0, "nvswitch": 1, "nic": 2, "switch": 3, "pcie": 4}
_GPU, _NIC, _SWITCH = 0, 2, 3
_HOST_LINK_PREFIXES = ("pcie", "qpi", "upi")  # link types that only ever join parts of one host
_U64 = np.uint64


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele, Lea & Flood 2014), vectorised on uint64 (wraps by design)."""
    x = x + _U64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> _U64(27))) * _U64(0x94D049BB133111EB)
    return x ^ (x >> _U64(31))


@dataclass(frozen=True, eq=False)
class _Template:
    """Paths inside one host layout, in local node indices (position in the host's node block)."""

    path: np.ndarray  # (m, m, L) local nodes, -1 padded
    plen: np.ndarray  # (m, m) nodes on the path; 0 = no path inside the host
    nic_of: np.ndarray  # (m,) local node of the NIC a node leaves through (GPU: its rail), -1 none
    rail_of: np.ndarray  # (m,) rail of that NIC, -1 none
    gpu_on_rail: np.ndarray  # (R,) first local GPU node on each rail
    gpu_local: np.ndarray  # (m,) the GPU's local index, -1 for other nodes
    gpu_node: np.ndarray  # (G,) local node of GPU local index k


class Router:
    """Paths of flows between graph nodes (GPUs, NICs, NVSwitches, switches) of one cluster."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.n_nodes = len(cluster.node_names)
        self.direct = cluster.meta.get("routing") == "direct"
        self.rail_optimized = bool(cluster.meta.get("rail_optimized", False))
        self.hash_ecmp = cluster.meta.get("ecmp") == "hash"
        self._read_nodes()
        keys = cluster.link_src * self.n_nodes + cluster.link_dst
        self._link_order = np.argsort(keys, kind="stable")
        self._link_keys = keys[self._link_order]
        self._internal = np.zeros(len(keys), dtype=bool)  # links inside one host (host templates)
        self._fabric = np.ones(len(keys), dtype=bool)  # links the fabric walk may use
        if not self.direct:
            hs, hd = self.host[cluster.link_src], self.host[cluster.link_dst]
            self._internal = (hs == hd) & (hs >= 0)
            self._fabric = ~self._host_only_links()
        self._build_templates()
        self._build_fabric()

    # ------------------------------------------------------------------------------------ set-up
    def _read_nodes(self) -> None:
        """Kind, host, GPU local index and NIC rail of every node, as arrays."""
        table = self.cluster.nodes
        seen: dict[str, int] = {}  # the few distinct kind names, coded once each
        code = np.fromiter(
            (seen.setdefault(k, len(seen)) for k in table.kind), dtype=np.int64, count=len(table.kind)
        )
        self.kind = np.array([_KIND.get(k, -1) for k in seen] + [-1], dtype=np.int64)[code]
        self.host = table.host.copy()
        self.gpu_local = table.local.copy()
        self.rail = table.rail.copy()

    def _host_only_links(self) -> np.ndarray:
        """Links a flow between hosts must never transit: PCIe/CPU links inside a host, and scale-up
        (NVLink) islands confined to one host. An NVLink island spanning hosts (an NVL72-like domain
        whose NVSwitch nodes serve several hosts) stays part of the fabric."""
        src, dst = self.cluster.link_src, self.cluster.link_dst
        types, type_of_link = self.cluster.link_type_codes  # tested once per link type, not once per link
        pcie = np.array([t.startswith(_HOST_LINK_PREFIXES) for t in types], dtype=bool)[type_of_link]
        keep = ~pcie
        adj = coo_matrix((np.ones(int(keep.sum())), (src[keep], dst[keep])), shape=(self.n_nodes,) * 2)
        labels = connected_components(adj, directed=False)[1]
        big = np.iinfo(np.int64).max
        host = np.where(self.host >= 0, self.host, big)
        lo = np.full(labels.max() + 1, big)
        hi = np.full(labels.max() + 1, -1)
        np.minimum.at(lo, labels, host)
        np.maximum.at(hi, labels, host)
        island = (lo == hi) & (lo != big)  # every node of the component in the same host
        return (pcie & self._internal) | (~pcie & island[labels[src]])

    def _host_blocks(self) -> tuple[np.ndarray, np.ndarray]:
        """(hosts x max nodes) array of each host's node indices (-1 padded), and each node's position."""
        in_host = np.flatnonzero(self.host >= 0)
        n_hosts = int(self.host.max()) + 1 if in_host.size else 0
        order = in_host[np.argsort(self.host[in_host], kind="stable")]
        counts = np.bincount(self.host[order], minlength=n_hosts)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pos = np.arange(order.size) - np.repeat(starts, counts)
        blocks = np.full((n_hosts, int(counts.max()) if n_hosts else 0), -1, dtype=np.int64)
        blocks[self.host[order], pos] = order
        local = np.full(self.n_nodes, -1, dtype=np.int64)
        local[order] = pos
        return blocks, local

    def _build_templates(self) -> None:
        """Group hosts by layout and compute each layout's paths once."""
        self.blocks, self.local = self._host_blocks()
        n_hosts = self.blocks.shape[0]
        self.host_template = np.zeros(n_hosts, dtype=np.int64)
        self.templates: list[_Template] = []
        self.width = 1
        if self.direct or n_hosts == 0:
            return
        inner, split = self._host_links()
        first, self.host_template = self._host_layouts(inner, split)
        for h in first.tolist():
            nodes = self.blocks[h][self.blocks[h] >= 0]
            self.templates.append(self._template(nodes, inner[split[h] : split[h + 1]]))
        self.width = max(t.path.shape[2] for t in self.templates)

    def _host_links(self) -> tuple[np.ndarray, np.ndarray]:
        """(each host's internal links, one direction each, grouped host by host; where each host's run starts,
        with the end appended)."""
        src, dst = self.cluster.link_src, self.cluster.link_dst
        inner = np.flatnonzero(self._internal & (src < dst))
        inner = inner[np.argsort(self.host[src[inner]], kind="stable")]
        split = np.searchsorted(self.host[src[inner]], np.arange(self.blocks.shape[0] + 1))
        return inner, split

    def _host_layouts(self, inner: np.ndarray, split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first host of each layout, layout of each host), layouts numbered in order of first host.

        A host's layout is its nodes' kind, GPU local index and NIC rail, then its internal links' local
        ends, type and capacity, all in node and link order: one row per host, compared as a whole (the
        signatures that tests/test_routing_layouts.py builds as tuples host by host, without the Python loop over
        16,384 hosts, issue #11). Padding (-2 after the nodes, -1 after the links; every value is >= -1,
        a link's local ends >= 0) keeps hosts of different sizes apart; capacities are compared by their
        bits (positive and finite: equal bits exactly when equal values)."""
        blocks, n_hosts = self.blocks, self.blocks.shape[0]
        present = blocks >= 0
        at = np.where(present, blocks, 0)
        cols = [np.where(present, a[at], -2) for a in (self.kind, self.gpu_local, self.rail)]
        src, dst = self.cluster.link_src, self.cluster.link_dst
        counts = np.diff(split)
        if inner.size:
            slot = np.arange(inner.size) - np.repeat(split[:-1], counts)
            host_of = np.repeat(np.arange(n_hosts), counts)
            _, type_code = self.cluster.link_type_codes
            cap_bits = self.cluster.link_capacity_bytes_per_s.view(np.int64)
            for values in (self.local[src[inner]], self.local[dst[inner]], type_code[inner], cap_bits[inner]):
                col = np.full((n_hosts, int(counts.max())), -1, dtype=np.int64)
                col[host_of, slot] = values
                cols.append(col)
        rows = np.concatenate(cols, axis=1)
        _, first, which = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty(order.size, dtype=np.int64)
        rank[order] = np.arange(order.size)
        return first[order], rank[which.ravel()]

    def _template(self, nodes: np.ndarray, links: np.ndarray) -> _Template:
        """All-pairs preferred paths inside one host, and its GPU/NIC/rail tables."""
        m = nodes.size
        cap = self.cluster.link_capacity_bytes_per_s[links]
        nvlink = np.array(
            [self.cluster.link_type[i].startswith(("nvlink", "ici")) for i in links], dtype=bool
        )
        weight = np.where(nvlink, 1.0, _NON_NVLINK_COST) + 1e-3 * cap.max(initial=1.0) / np.maximum(cap, 1.0)
        a, b = self.local[self.cluster.link_src[links]], self.local[self.cluster.link_dst[links]]
        graph = csr_matrix((weight, (a, b)), shape=(m, m))
        dist, pred = dijkstra(graph, directed=False, return_predecessors=True)
        paths = [[self._walk_pred(pred, i, j) for j in range(m)] for i in range(m)]
        width = max(len(p) for row in paths for p in row)
        path = np.full((m, m, width), -1, dtype=np.int64)
        plen = np.zeros((m, m), dtype=np.int64)
        for i in range(m):
            for j in range(m):
                plen[i, j] = len(paths[i][j])
                path[i, j, : plen[i, j]] = paths[i][j]
        return self._template_tables(nodes, path, plen, dist)

    @staticmethod
    def _walk_pred(pred: np.ndarray, i: int, j: int) -> list[int]:
        """Node list i → j from a Dijkstra predecessor matrix ([] when unreachable)."""
        if i == j:
            return [i]
        if pred[i, j] < 0:
            return []
        out = [j]
        while out[-1] != i:
            out.append(int(pred[i, out[-1]]))
        return out[::-1]

    def _template_tables(
        self, nodes: np.ndarray, path: np.ndarray, plen: np.ndarray, dist: np.ndarray
    ) -> _Template:
        """Which NIC each local node leaves through, and the GPU on each rail."""
        m = nodes.size
        gpu_local = self.gpu_local[nodes]
        rails = self.rail[nodes]
        n_gpus, n_rails = int((gpu_local >= 0).sum()), int((rails >= 0).sum())
        nic_of_rail = np.full(n_rails, -1, dtype=np.int64)
        nic_of_rail[rails[rails >= 0]] = np.flatnonzero(rails >= 0)
        gpu_node = np.full(n_gpus, -1, dtype=np.int64)
        gpu_node[gpu_local[gpu_local >= 0]] = np.flatnonzero(gpu_local >= 0)
        nic_of = np.full(m, -1, dtype=np.int64)
        if n_rails:
            gpu_rail = gpu_local * n_rails // max(n_gpus, 1)
            nic_of = np.where(gpu_local >= 0, nic_of_rail[np.clip(gpu_rail, 0, n_rails - 1)], -1)
            nics = np.flatnonzero(rails >= 0)
            nearest = nics[np.argmin(dist[:, nics], axis=1)]  # non-GPU nodes: the closest NIC
            nic_of = np.where(nic_of >= 0, nic_of, np.where(rails >= 0, np.arange(m), nearest))
        rail_of = np.where(nic_of >= 0, rails[np.maximum(nic_of, 0)], -1)
        gpu_on_rail = np.full(n_rails, -1, dtype=np.int64)
        for r in range(n_rails):
            on = np.flatnonzero((gpu_local >= 0) & (rail_of == r))
            gpu_on_rail[r] = on[np.argmin(gpu_local[on])] if on.size else -1
        return _Template(path, plen, nic_of, rail_of, gpu_on_rail, gpu_local, gpu_node)

    def _build_fabric(self) -> None:
        """The fabric graph (host-internal links removed), its ports, anchors and ECMP keys."""
        src, dst = self.cluster.link_src, self.cluster.link_dst
        fab = self._fabric
        deg = np.bincount(src[fab], minlength=self.n_nodes)
        self.fabric_port = deg > 0
        # A NIC with one fabric link to a switch is a leaf port: BFS works on the switches above it.
        nbr = np.full(self.n_nodes, -1, dtype=np.int64)
        nbr[src[fab]] = dst[fab]
        anchored = (self.kind == _NIC) & (deg == 1) & (self.kind[np.maximum(nbr, 0)] == _SWITCH)
        self.anchor = np.where(anchored, nbr, np.arange(self.n_nodes))
        core = self.fabric_port & ~anchored
        if self.direct:
            core = np.ones(self.n_nodes, dtype=bool)
        self.core_nodes = np.flatnonzero(core)
        self.core_index = np.full(self.n_nodes, -1, dtype=np.int64)
        self.core_index[self.core_nodes] = np.arange(self.core_nodes.size)
        keep = fab & core[src] & core[dst]
        c = self.core_nodes.size
        a, b = self.core_index[src[keep]], self.core_index[dst[keep]]
        adj = coo_matrix((np.ones(a.size), (a, b)), shape=(c, c)).tocsr()
        adj.sort_indices()
        self.core_csr = adj
        fab_adj = coo_matrix((np.ones(int(fab.sum())), (src[fab], dst[fab])), shape=(self.n_nodes,) * 2)
        self.fabric_comp = connected_components(fab_adj, directed=False)[1]
        # ECMP destination keys: rank of each endpoint among the ports ordered by (anchor, node)
        order = np.lexsort((np.arange(self.n_nodes), self.anchor))
        self.port_key = np.empty(self.n_nodes, dtype=np.uint64)
        self.port_key[order] = np.arange(self.n_nodes, dtype=np.uint64)
        if anchored.any():  # rank among the ports of its own leaf, leaf-major: D-mod-k's destination id
            ports = np.flatnonzero(anchored)
            ports = ports[np.lexsort((ports, self.anchor[ports]))]
            self.port_key[ports] = np.arange(ports.size, dtype=np.uint64)
        self.twin = _twin_classes(adj)
        self._twin_first = np.full(int(self.twin.max(initial=-1)) + 1, c, dtype=np.int64)
        np.minimum.at(self._twin_first, self.twin, np.arange(c))  # each class's lowest member: its BFS source
        self._dist_row: dict[int, int] = {}  # twin class → row of ``_dist``
        self._dist = np.zeros((0, c), dtype=np.int32)

    # ------------------------------------------------------------------------------------ public
    def paths(
        self, src: np.ndarray, dst: np.ndarray, salt: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """CSR paths of flows ``src[i] → dst[i]`` (graph node indices): ``links[indptr[i]:indptr[i+1]]``
        are the directed link ids flow ``i`` crosses, in order; ``salt`` separates parallel flows."""
        src = np.asarray(src, dtype=np.int64).ravel()
        dst = np.asarray(dst, dtype=np.int64).ravel()
        if src.shape != dst.shape:
            raise ValueError("src and dst must have the same length")
        if src.size and (min(src.min(), dst.min()) < 0 or max(src.max(), dst.max()) >= self.n_nodes):
            raise ValueError(f"node indices must be in [0, {self.n_nodes})")
        salt_u = (
            np.zeros(src.size, dtype=np.uint64)
            if salt is None
            else np.asarray(salt).astype(np.uint64).ravel()
        )
        segments = self._segments(src, dst, salt_u)
        node_ptr, nodes = _concat(segments, src.size)
        return self._to_links(node_ptr, nodes)

    def gpu_paths(
        self, src_gpu: np.ndarray, dst_gpu: np.ndarray, salt: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``paths`` between global GPU ids instead of node indices."""
        idx = self.cluster.gpu_node_index
        return self.paths(idx[np.asarray(src_gpu)], idx[np.asarray(dst_gpu)], salt)

    def path_nodes(self, src: int, dst: int, salt: int = 0) -> list[str]:
        """Readable node names along one flow's path (for debugging and reports)."""
        indptr, links = self.paths(np.array([src]), np.array([dst]), np.array([salt]))
        names = self.cluster.node_names
        if indptr[1] == 0:
            return [names[src]]
        return [names[self.cluster.link_src[links[0]]]] + [names[self.cluster.link_dst[k]] for k in links]

    # ------------------------------------------------------------------------------------ segments
    def _segments(
        self, src: np.ndarray, dst: np.ndarray, salt: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Node segments of every flow: host part, fabric part, host part (lengths 0 where unused)."""
        n = src.size
        hs, hd = self.host[src], self.host[dst]
        if self.direct:
            return [self._fabric_segment(src, dst, src, dst, salt)]
        local_path = np.zeros(n, dtype=bool)
        first = (np.full((n, 1), -1, dtype=np.int64), np.zeros(n, dtype=np.int64))
        same = (hs == hd) & (hs >= 0)
        if same.any():
            nodes, lens = self._host_path(hs[same], self.local[src[same]], self.local[dst[same]])
            local_path[same] = lens > 0
            first = _scatter(first, same, nodes, lens)
        cross = ~local_path & (src != dst)
        out = [first]
        if cross.any():
            out += self._cross_segments(src, dst, salt, cross)
        stay = ~local_path & ~cross  # src == dst
        out[0][0][stay, 0] = src[stay]
        out[0][1][stay] = np.maximum(out[0][1][stay], 1)
        return out

    def _host_path(self, hosts: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Global nodes of the template paths local ``a`` → local ``b`` in ``hosts`` ((k, width), lens)."""
        nodes = np.full((hosts.size, self.width), -1, dtype=np.int64)
        lens = np.zeros(hosts.size, dtype=np.int64)
        tpl = self.host_template[hosts]
        for t, template in enumerate(self.templates):
            m = np.flatnonzero(tpl == t)
            if not m.size:
                continue
            loc = template.path[a[m], b[m]]
            glob = np.where(loc >= 0, self.blocks[hosts[m][:, None], np.maximum(loc, 0)], -1)
            nodes[m, : loc.shape[1]] = glob
            lens[m] = template.plen[a[m], b[m]]
        return nodes, lens

    def _tpl_lookup(self, hosts: np.ndarray, table: str, index: np.ndarray) -> np.ndarray:
        """``template.<table>[index]`` for each host's template (-1 where out of range)."""
        out = np.full(hosts.size, -1, dtype=np.int64)
        tpl = self.host_template[hosts]
        for t, template in enumerate(self.templates):
            m = np.flatnonzero(tpl == t)
            arr = getattr(template, table)
            ok = (index[m] >= 0) & (index[m] < arr.size)
            out[m[ok]] = arr[index[m][ok]]
        return out

    def _nic_port(self, nodes: np.ndarray, hosts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(local NIC node, NIC node) each endpoint would leave its host through; -1 where none."""
        nic_local = np.full(nodes.size, -1, dtype=np.int64)
        inside = np.flatnonzero(hosts >= 0)
        if inside.size:
            nic_local[inside] = self._tpl_lookup(hosts[inside], "nic_of", self.local[nodes[inside]])
        ok = nic_local >= 0
        nic = np.full(nodes.size, -1, dtype=np.int64)
        nic[ok] = self.blocks[hosts[ok], nic_local[ok]]
        return nic_local, nic

    def _ports(
        self, s: np.ndarray, d: np.ndarray, hs: np.ndarray, hd: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Where each flow enters and leaves the fabric: (exit port, local exit NIC or -1, entry port,
        local entry NIC or -1). A node with fabric links of its own (a NIC, a switch, a GPU on an NVLink
        domain spanning hosts) is its own port when the other end is reachable from it over the fabric;
        otherwise the flow goes through the host's NIC."""
        s_own = np.where(self.fabric_port[s] | (hs < 0), s, -1)
        d_own = np.where(self.fabric_port[d] | (hd < 0), d, -1)
        s_nicl, s_nic = self._nic_port(s, hs)
        d_nicl, d_nic = self._nic_port(d, hd)
        exit_port, entry_port = np.full(s.size, -1), np.full(s.size, -1)
        exit_nic, entry_nic = np.full(s.size, -1), np.full(s.size, -1)
        todo = np.ones(s.size, dtype=bool)
        comp = self.fabric_comp
        none = np.full(s.size, -1)
        for a, al, b, bl in (
            (s_own, none, d_own, none),
            (s_nic, s_nicl, d_own, none),
            (s_own, none, d_nic, d_nicl),
            (s_nic, s_nicl, d_nic, d_nicl),
        ):
            ok = todo & (a >= 0) & (b >= 0) & (comp[np.maximum(a, 0)] == comp[np.maximum(b, 0)])
            exit_port[ok], entry_port[ok] = a[ok], b[ok]
            exit_nic[ok], entry_nic[ok] = al[ok], bl[ok]
            todo &= ~ok
        if todo.any():
            i = int(np.flatnonzero(todo)[0])
            names = self.cluster.node_names
            raise ValueError(f"no path from {names[s[i]]} to {names[d[i]]} (no shared fabric, no NIC)")
        return exit_port, exit_nic, entry_port, entry_nic

    def _cross_segments(
        self, src: np.ndarray, dst: np.ndarray, salt: np.ndarray, cross: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Segments of flows that leave their host: src → (proxy →) NIC, fabric, NIC → dst."""
        idx = np.flatnonzero(cross)
        s, d = src[idx], dst[idx]
        hs, hd = self.host[s], self.host[d]
        exit_port, exit_nic, entry_port, entry_nic = self._ports(s, d, hs, hd)
        via = s.copy()  # the GPU whose NIC the flow leaves through (PXN proxy on rail-optimized fabrics)
        if self.rail_optimized:
            via, exit_port, exit_nic = self._pxn(s, d, hs, hd, exit_port, exit_nic, entry_port)
        n = cross.size
        segs = [self._host_segment(hs, s, via, exit_nic < 0, idx, n)]
        segs.append(self._host_segment(hs, via, exit_port, exit_nic < 0, idx, n))
        segs.append(_expand(self._fabric_segment(exit_port, entry_port, s, d, salt[idx]), idx, n))
        segs.append(self._host_segment(hd, entry_port, d, entry_nic < 0, idx, n))
        return segs

    def _host_segment(
        self, hosts: np.ndarray, a: np.ndarray, b: np.ndarray, skip: np.ndarray, idx: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Template path a → b inside ``hosts`` (length 0 where ``skip`` or a == b), spread to ``n`` flows."""
        use = ~skip & (a != b)
        nodes = np.full((a.size, self.width), -1, dtype=np.int64)
        lens = np.zeros(a.size, dtype=np.int64)
        if use.any():
            nodes[use], lens[use] = self._host_path(hosts[use], self.local[a[use]], self.local[b[use]])
            if (lens[use] == 0).any():
                raise ValueError("a host has no internal path from a GPU to its NIC")
        return _expand((nodes, lens), idx, n)

    def _pxn(
        self,
        s: np.ndarray,
        d: np.ndarray,
        hs: np.ndarray,
        hd: np.ndarray,
        exit_port: np.ndarray,
        exit_nic: np.ndarray,
        entry_port: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Move GPU sources to the local GPU on the destination's rail (NCCL PXN)."""
        via = s.copy()
        rail = self.rail[entry_port]
        gpu_src = (self.kind[s] == _GPU) & (exit_nic >= 0) & (rail >= 0)
        m = np.flatnonzero(gpu_src)
        if not m.size:
            return via, exit_port, exit_nic
        same_local = self._tpl_lookup(
            hs[m], "gpu_node", np.where(self.kind[d[m]] == _GPU, self.gpu_local[d[m]], -1)
        )
        same_rail = self._tpl_lookup(hs[m], "rail_of", same_local)
        proxy = np.where((same_local >= 0) & (same_rail == rail[m]), same_local, -1)
        proxy = np.where(proxy >= 0, proxy, self._tpl_lookup(hs[m], "gpu_on_rail", rail[m]))
        ok = proxy >= 0  # a source host without that rail keeps its own NIC
        m, proxy = m[ok], proxy[ok]
        via[m] = self.blocks[hs[m], proxy]
        exit_nic = exit_nic.copy()
        exit_port = exit_port.copy()
        exit_nic[m] = self._tpl_lookup(hs[m], "nic_of", proxy)
        exit_port[m] = self.blocks[hs[m], exit_nic[m]]
        return via, exit_port, exit_nic

    # ------------------------------------------------------------------------------------ fabric
    def _fabric_segment(
        self, a: np.ndarray, b: np.ndarray, s: np.ndarray, d: np.ndarray, salt: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Fabric nodes from port ``a`` to port ``b``: a, its leaf, ..., b's leaf, b."""
        n = a.size
        start, goal = self.anchor[a], self.anchor[b]
        if self.hash_ecmp:
            key = _mix(s.astype(np.uint64) * _U64(0x100000001B3) ^ _mix(d.astype(np.uint64)) ^ salt)
        else:
            key = self.port_key[b] + salt
        walk, wlen = self._walk(self.core_index[start], self.core_index[goal], key)
        head = (a != start).astype(np.int64)  # a NIC hanging off its leaf
        tail = (b != goal).astype(np.int64)
        nodes = np.full((n, walk.shape[1] + 2), -1, dtype=np.int64)
        nodes[:, 0] = a
        for j in range(walk.shape[1]):
            m = np.flatnonzero(j < wlen)
            nodes[m, head[m] + j] = walk[m, j]
        lens = head + wlen
        t = np.flatnonzero(tail)
        nodes[t, lens[t]] = b[t]
        lens = lens + tail
        same = np.flatnonzero(a == b)
        nodes[same] = -1
        nodes[same, 0], lens[same] = a[same], 1
        return nodes, lens

    def _distances(self, targets: np.ndarray) -> np.ndarray:
        """Row index into the cached BFS distance matrix for each target core node (one row per twin
        class: ``_hops`` patches the class's own members)."""
        cls = self.twin[targets]
        uniq = np.unique(cls)
        missing = [int(t) for t in uniq if int(t) not in self._dist_row]
        if missing:
            # one BFS per twin class, from its first member (every member has the same distances to every
            # node outside the class); the core graph holds both directions of every link, so a directed
            # BFS is exact (and faster)
            first = self._twin_first[missing]
            d = shortest_path(self.core_csr, method="D", directed=True, unweighted=True, indices=first)
            d = np.where(np.isfinite(d), d, -1).astype(np.int32)
            for k, t in enumerate(missing):
                self._dist_row[t] = self._dist.shape[0] + k
            self._dist = np.vstack([self._dist, d])
        lookup = np.array([self._dist_row[int(t)] for t in uniq], dtype=np.int64)
        return lookup[np.searchsorted(uniq, cls)]

    def _hops(self, row: np.ndarray, goal: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """Hops from core ``nodes`` to core ``goal`` (``row``: the goal's ``_distances`` row, a BFS from the
        first member of the goal's twin class): that BFS's distance, except to the goal itself (0) and, when
        the goal is another member, to the BFS's source (2: twins meet through a shared neighbour)."""
        d = self._dist[row, nodes]
        source = self._twin_first[self.twin[goal]]
        return np.where(nodes == goal, 0, np.where(nodes == source, 2, d))

    def _walk(self, start: np.ndarray, goal: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """ECMP shortest-path walks on the core graph; (global nodes padded, lengths)."""
        row = self._distances(goal)
        hops = self._hops(row, goal, start).astype(np.int64)
        if (hops < 0).any():
            bad = int(np.flatnonzero(hops < 0)[0])
            a, b = (self.cluster.node_names[self.core_nodes[x[bad]]] for x in (start, goal))
            raise ValueError(f"no fabric path from {a} to {b}")
        steps = int(hops.max(initial=0))
        walk = np.full((start.size, steps + 1), -1, dtype=np.int64)
        walk[:, 0] = start
        cur = start.copy()
        key = key.astype(np.uint64)
        radix = np.ones(start.size, dtype=np.uint64)
        for step in range(1, steps + 1):
            act = np.flatnonzero(hops >= step)
            pick = self._next_hops(cur[act], row[act], goal[act], hops[act] - step, key, radix, act)
            cur[act] = pick
            walk[act, step] = pick
        return np.where(walk >= 0, self.core_nodes[np.maximum(walk, 0)], -1), hops + 1

    def _next_hops(
        self,
        cur: np.ndarray,
        row: np.ndarray,
        goal: np.ndarray,
        left: np.ndarray,
        key: np.ndarray,
        radix: np.ndarray,
        act: np.ndarray,
    ) -> np.ndarray:
        """One hop for each active flow: among the neighbours ``left`` hops from the goal, the
        ``(key // radix) % count``-th; advances ``radix`` (and re-hashes keys whose digits ran out).

        A flow one hop from its goal steps onto it (the only neighbour 0 hops away). Any other flow is at
        least two hops from every member of the goal's twin class (a neighbour of one twin is a neighbour
        of all), so no member is among its candidates and the candidates depend only on (current node, twin
        class of the goal), which thousands of flows share (the flows of one leaf to one pod): they are
        listed once per distinct pair (the class's BFS row stands for the class), then each flow picks."""
        out = goal.copy()  # left == 0: onto the goal (one candidate: the digit is 0, the radix stays)
        far = np.flatnonzero(left > 0)
        if far.size:
            cur_f, row_f = cur[far], row[far]
            n_rows = max(int(self._dist.shape[0]), 1)
            _, first_flow, pair_of = np.unique(cur_f * n_rows + row_f, return_index=True, return_inverse=True)
            pair_of = pair_of.ravel()
            p_cur, p_row, p_left = cur_f[first_flow], row_f[first_flow], left[far][first_flow]
            indptr, indices = self.core_csr.indptr, self.core_csr.indices
            deg = indptr[p_cur + 1] - indptr[p_cur]
            first = np.concatenate([[0], np.cumsum(deg)[:-1]])
            owner = np.repeat(np.arange(first_flow.size), deg)
            nb = indices[np.repeat(indptr[p_cur] - first, deg) + np.arange(deg.sum())]
            ok = self._dist[p_row[owner], nb] == p_left[owner]
            cnt = np.bincount(owner[ok], minlength=first_flow.size)
            good = nb[ok]  # qualifying neighbours, pair by pair in CSR order
            start = np.concatenate([[0], np.cumsum(cnt)[:-1]])
            n = cnt[pair_of].astype(np.uint64)
            flows = act[far]
            pick = (key[flows] // radix[flows]) % n
            radix[flows] *= n
            out[far] = good[start[pair_of] + pick.astype(np.int64)]
        over = radix > _U64(1 << 32)  # digits used up: draw fresh ones
        key[over], radix[over] = _mix(key[over]), _U64(1)
        return out

    # ------------------------------------------------------------------------------------ links
    def _to_links(self, node_ptr: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Consecutive node pairs → directed link ids, as CSR."""
        n = node_ptr.size - 1
        counts = np.diff(node_ptr) - 1
        keep = np.ones(max(nodes.size - 1, 0), dtype=bool)
        ends = node_ptr[1:-1] - 1
        keep[ends[ends < keep.size]] = False
        u, v = nodes[:-1][keep], nodes[1:][keep]
        keys = u * self.n_nodes + v
        at = np.searchsorted(self._link_keys, keys)
        at = np.minimum(at, self._link_keys.size - 1)
        if keys.size and not np.array_equal(self._link_keys[at], keys):
            bad = int(np.flatnonzero(self._link_keys[at] != keys)[0])
            names = self.cluster.node_names
            raise AssertionError(f"routed hop {names[u[bad]]} -> {names[v[bad]]} is not a link")
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return indptr, self._link_order[at].astype(np.int64)


# ---------------------------------------------------------------------------------------- helpers
def _twin_classes(adj: csr_matrix) -> np.ndarray:
    """Class of each node of a symmetric graph, by its set of neighbours (open twins; isolated nodes alone).

    Twins are never adjacent (a node is not its own neighbour), are two hops apart through any shared
    neighbour, and every path from one to a third node starts at a neighbour they share, so all members of
    a class have the same distance to every node outside it: one BFS per class serves them all. On a
    3-tier fat-tree the leaves of a pod are twins (same spines), and so are the spines of a pod's plane and
    the cores of a group (64 BFS instead of 2,048 on the 65,536-GPU ``dgx-h100``)."""
    n = adj.shape[0]
    seen: dict[bytes, int] = {}
    out = np.empty(n, dtype=np.int64)
    indptr, indices = adj.indptr, adj.indices
    for i in range(n):
        row = indices[indptr[i] : indptr[i + 1]]
        out[i] = seen.setdefault(row.tobytes(), len(seen)) if row.size else -1
    alone = np.flatnonzero(out < 0)
    out[alone] = len(seen) + np.arange(alone.size)
    return out


def _scatter(
    base: tuple[np.ndarray, np.ndarray], mask: np.ndarray, nodes: np.ndarray, lens: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``base`` with rows ``mask`` replaced by ``nodes``/``lens`` (widening as needed)."""
    bn, bl = base
    width = max(bn.shape[1], nodes.shape[1])
    out = np.full((bn.shape[0], width), -1, dtype=np.int64)
    out[:, : bn.shape[1]] = bn
    out[mask] = -1
    out[mask, : nodes.shape[1]] = nodes
    ln = bl.copy()
    ln[mask] = lens
    return out, ln


def _expand(seg: tuple[np.ndarray, np.ndarray], idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A segment computed for flows ``idx`` spread to all ``n`` flows (length 0 elsewhere)."""
    nodes, lens = seg
    out = np.full((n, nodes.shape[1]), -1, dtype=np.int64)
    out[idx] = nodes
    ln = np.zeros(n, dtype=np.int64)
    ln[idx] = lens
    return out, ln


def _concat(segments: list[tuple[np.ndarray, np.ndarray]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Join per-flow node segments end to start: a segment's first node repeats the last node emitted
    before it, unless nothing was emitted yet; empty segments (length 0) are skipped."""
    emitted = np.zeros(n, dtype=bool)
    skips, total = [], np.zeros(n, dtype=np.int64)
    for _, lens in segments:
        skip = (emitted & (lens > 0)).astype(np.int64)
        skips.append(skip)
        total += np.maximum(lens - skip, 0)
        emitted |= lens > 0
    node_ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(total, out=node_ptr[1:])
    flat = np.full(int(node_ptr[-1]), -1, dtype=np.int64)
    offset = node_ptr[:-1].copy()
    for (nodes, lens), skip in zip(segments, skips, strict=True):
        for j in range(nodes.shape[1]):
            m = np.flatnonzero((j >= skip) & (j < lens))
            if not m.size and j >= 1:
                break
            flat[offset[m] + (j - skip[m])] = nodes[m, j]
        offset += np.maximum(lens - skip, 0)
    return node_ptr, flat
