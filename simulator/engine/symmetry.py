"""Rank classes of the symmetry reduction: ranks that run the same program *and* that the network treats alike.

docs/design.md ("Symmetry"): the engine simulates one representative per class and lets a representative's
collective stand for every group instance whose members have the same classes, moved as one lockstep coflow.
That is exact only if those instances would each take the same time on their own. Pipeline stage alone does
not guarantee it: on a DGX-1 cube-mesh some GPU pairs have two NVLinks and others one, on a torus a group's
position changes its hops, on an oversubscribed fat-tree a data-parallel ring may or may not leave its leaf,
and on a host with one NIC per two GPUs two rings share a NIC. So the classes start from the pipeline stage
and are refined by a *network fingerprint* of every group instance (and pipeline pair) a rank belongs to:
its latency terms, its bandwidth time alone, and its bandwidth time beside the instances of the same kind that
reach the collective with it. Ranks whose fingerprints differ become separate classes
(simulated separately), so the reduced run equals ``--full``; on regular fabrics every fingerprint agrees and
the reduction keeps one rank per stage.

Cost: each kind's probes are routed once over all its instances (as the symmetric run routes them) and split
by instance with numpy, so the check adds a few routed collectives per kind, whatever the cluster size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.network.models.base import CollectiveRequest, PhaseCache
from simulator.parallel.plan import GROUP_KINDS, ParallelPlan
from simulator.topology.cluster import Cluster
from simulator.workload.ops import Axis, CollectiveKind

# The probe message (per-rank buffer, bytes): its bandwidth terms and its latency terms are fingerprinted apart.
PROBE_BYTES = 256.0 * 2**20
# On a direct fabric (torus, explicit GPU-to-GPU graph), and on hosts without an NVSwitch (DGX-1 cube-mesh,
# PCIe hosts whose GPU pairs share a PCIe switch and NIC), traffic of every kind crosses the same links in
# position-dependent ways, so ranks that are alike alone still meet other traffic at different times
# (measured against --full: 0.7% apart on the 4x4x4 torus, 6.3% on four DGX-1). Up to this many ranks such a
# cluster is simulated rank by rank; beyond, the run warns that the reduction was assumed.
MAX_IRREGULAR_FULL_RANKS = 4096
# Fingerprints equal to this relative precision are the same (float noise of routing sums).
_ROUND_DIGITS = 9


@dataclass(frozen=True)
class Refinement:
    """Per-rank class ids (one per distinct (stage, fingerprints) combination) and what was left unchecked."""

    class_of: np.ndarray
    unchecked_kinds: tuple[str, ...]


_PROBE_ALGORITHM = {
    CollectiveKind.ALL_REDUCE: "ring",
    CollectiveKind.ALL_GATHER: "ring",
    CollectiveKind.ALL_TO_ALL: "direct",
    CollectiveKind.SEND_RECV: "p2p",
}


def _probe_ops(kind: str) -> tuple[CollectiveKind, ...]:
    """Collectives whose geometry stands for what a group of ``kind`` runs."""
    if kind == "p2p":  # a pipeline send: the pair itself
        return (CollectiveKind.SEND_RECV,)
    if kind == Axis.EP:
        return (CollectiveKind.ALL_TO_ALL,)
    if kind == Axis.CP:
        return (CollectiveKind.ALL_GATHER, CollectiveKind.SEND_RECV)
    return (CollectiveKind.ALL_REDUCE,)


def _request(
    kind: str, op: CollectiveKind, groups: np.ndarray, nbytes: float, key: tuple[object, ...]
) -> CollectiveRequest:
    if op is CollectiveKind.SEND_RECV and kind != "p2p":  # ring shift (context parallel): j to j+1
        groups = np.stack([groups.ravel(), np.roll(groups, -1, axis=1).ravel()], axis=1)
    return CollectiveRequest(op, groups, nbytes, key)


class _Prober:
    """Network fingerprints of every instance of a kind at once: the kind's probe collectives routed once over
    all instances (as the symmetric run routes them), then split by instance."""

    def __init__(self, cluster: Cluster, cache: PhaseCache) -> None:
        self.cluster = cluster
        self.cache = cache
        types, self._type_of_link = np.unique(np.array(cluster.link_type), return_inverse=True)
        self._types = [str(t) for t in types]
        self._alpha = np.array([cache.calib.step_latency(t) for t in self._types])[self._type_of_link]
        self._eff: dict[str, np.ndarray] = {}

    def _efficiency(self, key: str) -> np.ndarray:
        """Calibrated protocol efficiency of every directed link (computed per link type)."""
        if key not in self._eff:
            per_type = np.array([self.cache.calib.link_efficiency(t, key) for t in self._types])
            self._eff[key] = per_type[self._type_of_link]
        return self._eff[key]

    def fingerprints(self, kind: str, groups: np.ndarray, stage: np.ndarray) -> np.ndarray:
        """``[instances, features]``: per probe, its latency terms, its bandwidth time alone and its bandwidth
        time beside the other instances of the kind on the same pipeline stages, which reach it together (all
        instances routed at once, then split)."""
        cluster, n_links = self.cluster, self.cluster.link_capacity_bytes_per_s.size
        cap = self.cache.capacity
        owner = np.full(len(cluster.node_names), -1, dtype=np.int64)  # graph node → instance sending from it
        senders = groups[:, :1] if kind == "p2p" else groups
        owner[cluster.gpu_node_index[senders]] = np.arange(len(groups))[:, None]
        sig = _classes_of(stage[groups])  # instances on the same stages run at the same time
        features = []
        for op in _probe_ops(kind):
            # one algorithm per kind of collective, whatever NCCL's tuner would pick by size: the geometry, not
            # the protocol, is what differs between instances
            algo = self.cache._algo(_PROBE_ALGORITHM[op])
            req = _request(kind, op, groups, PROBE_BYTES, ("probe-all", kind, op.value))
            latency, alone, beside = (np.zeros(len(groups)) for _ in range(3))
            for phase in algo.phases(req.kind, req.groups, PROBE_BYTES, cluster):
                inst = owner[phase.src]
                inst = np.where(inst < 0, owner[phase.dst], inst)  # flows into a switch
                indptr, links = cluster.router.paths(phase.src, phase.dst)
                flow = np.repeat(np.arange(phase.num_flows), np.diff(indptr))
                load = phase.bytes[flow] / np.maximum(self._efficiency(phase.efficiency_key)[links], 1e-9)
                pair, where = np.unique(inst[flow] * n_links + links, return_inverse=True)
                tot = np.bincount(where, weights=load)
                i_of, l_of = pair // n_links, pair % n_links
                s_of = sig[i_of]
                together, at = np.unique(s_of * n_links + l_of, return_inverse=True)
                concurrent = np.bincount(at, weights=tot)[at]  # load of all same-stage instances on the link
                t_alone, t_beside, alpha = (np.zeros(len(groups)) for _ in range(3))
                np.maximum.at(t_alone, i_of, tot / cap[l_of])
                np.maximum.at(t_beside, i_of, concurrent / cap[l_of])
                np.maximum.at(alpha, i_of, self._alpha[l_of])
                latency += phase.steps * alpha
                alone += t_alone
                beside += t_beside
            features += [latency, alone, beside]
        return np.stack(features, axis=1)


def refine(plan: ParallelPlan, cluster: Cluster, cache: PhaseCache) -> Refinement:
    """Pipeline stage of every rank, split by the network fingerprints of its groups and pipeline pairs."""
    prober = _Prober(cluster, cache)
    stage = plan.coords["pp"]
    if not _regular(cluster):
        if plan.dims.world <= MAX_IRREGULAR_FULL_RANKS:
            return Refinement(np.arange(plan.dims.world, dtype=np.int64), ())
        return Refinement(stage.copy(), ("irregular-fabric",))
    units = _units(plan)  # kind → [instances, members] of ranks (pipeline pairs as kind "p2p")
    prints = {kind: prober.fingerprints(kind, groups, stage) for kind, groups in units.items()}
    columns: list[np.ndarray] = [stage]
    for kind, groups in units.items():
        ids = _classes_of(_quantise(prints[kind]))
        columns.extend(_rank_columns(kind, groups, ids, plan.dims.world))
    class_of = _classes_of(np.stack(columns, axis=1))
    return Refinement(_renumber(_close(plan, class_of), stage), ())


def _quantise(x: np.ndarray) -> np.ndarray:
    """Equal to ``_ROUND_DIGITS`` significant digits, per column (float noise of different summation orders)."""
    scale = np.maximum(np.abs(x).max(axis=0, keepdims=True), 1e-300)
    return np.round(x / scale * 10.0**_ROUND_DIGITS)


def _regular(cluster: Cluster) -> bool:
    """Switched fabric, and every host an NVSwitch host (each GPU on its own switch ports and NIC path)."""
    groups = cluster.meta.get("host_groups")
    builders = (
        {g.get("builder") for g in groups if isinstance(g, dict)} if isinstance(groups, list) else set()
    )
    return cluster.meta.get("routing") == "switched" and builders <= {"nvswitch"}


def _units(plan: ParallelPlan) -> dict[str, np.ndarray]:
    """Every group instance of more than one rank per kind, and the pipeline's stage-to-stage pairs."""
    out: dict[str, np.ndarray] = {k: plan.groups(k) for k in GROUP_KINDS if k != Axis.PP and plan.groups(k).shape[1] > 1}
    if plan.dims.pp > 1:
        stride = plan.dims.world // plan.dims.pp
        ranks = np.arange(plan.dims.world)
        out["p2p"] = np.stack([ranks[:-stride], ranks[stride:]], axis=1)
    return out


def _rank_columns(kind: str, groups: np.ndarray, ids: np.ndarray, world: int) -> list[np.ndarray]:
    """Fingerprint ids per rank: of its instance; for pipeline pairs, of its send and of its receive."""
    if kind == "p2p":
        send, recv = np.full(world, -1, dtype=np.int64), np.full(world, -1, dtype=np.int64)
        send[groups[:, 0]] = ids
        recv[groups[:, 1]] = ids
        return [send, recv]
    col = np.empty(world, dtype=np.int64)
    col[groups] = ids[:, None]
    return [col]


def _classes_of(rows: np.ndarray) -> np.ndarray:
    """One id per distinct row."""
    _, inverse = np.unique(rows, axis=0, return_inverse=True)
    return inverse.ravel().astype(np.int64)


def _close(plan: ParallelPlan, class_of: np.ndarray) -> np.ndarray:
    """Split classes until each is closed under the engine's matching: every rank of a class sits in groups
    with the same ordered member classes and sends to (receives from) ranks of one class. The engine meets a
    representative's collective with the representatives of its group's classes and matches a send with the
    receive of the peer's representative; without closure those would not be the same meeting (deadlock)."""
    stride = plan.dims.world // plan.dims.pp
    ranks = np.arange(plan.dims.world)
    kinds = [k for k in GROUP_KINDS if plan.groups(k).shape[1] > 1]
    while True:
        columns = [class_of]
        for kind in kinds:
            groups = plan.groups(kind)
            sig = _classes_of(class_of[groups])  # ordered member classes of each instance
            col = np.empty_like(class_of)
            col[groups] = sig[:, None]
            columns.append(col)
        if plan.dims.pp > 1:
            for offset in (1, -1):
                peer = ranks + offset * stride
                inside = (peer >= 0) & (peer < ranks.size)
                columns.append(np.where(inside, class_of[np.clip(peer, 0, ranks.size - 1)], -1))
        refined = _classes_of(np.stack(columns, axis=1))
        if refined.max() == class_of.max():
            return refined
        class_of = refined


def _renumber(class_of: np.ndarray, stage: np.ndarray) -> np.ndarray:
    """Class ids ordered by their lowest rank, so that an unrefined plan keeps class id = stage."""
    first = np.full(class_of.max() + 1, class_of.size, dtype=np.int64)
    np.minimum.at(first, class_of, np.arange(class_of.size))
    order = np.argsort(first, kind="stable")
    new_id = np.empty_like(order)
    new_id[order] = np.arange(order.size)
    return new_id[class_of]
