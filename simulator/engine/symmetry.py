"""Rank classes of the symmetry reduction: ranks that run the same program *and* that the network treats alike.

docs/design.md ("Symmetry"): the engine simulates one representative per class and lets a representative's
collective stand for every group instance whose members have the same classes, moved as one lockstep coflow.
That is exact only if those instances would each take the same time on their own. Pipeline stage alone does
not guarantee it: on a DGX-1 cube-mesh some GPU pairs have two NVLinks and others one, on a torus a group's
position changes its hops, on an oversubscribed fat-tree a data-parallel ring may or may not leave its leaf,
and on a host with one NIC per two GPUs two rings share a NIC. So the classes start from the pipeline stage
and are refined by a *network fingerprint* of every group instance (and pipeline pair) a rank belongs to:
its time alone at a latency-bound and a bandwidth-bound size, and its max-min fair share when every
concurrent instance of the same kind runs beside it. Ranks whose fingerprints differ become separate classes
(simulated separately), so the reduced run equals ``--full``; on regular fabrics every fingerprint agrees and
the reduction keeps one rank per stage.

Cost: routing a probe per distinct instance. Instances inside one host (tensor-parallel groups) on clusters
whose hosts are built alike are identified by their GPUs' local indices, so a 16,384-GPU cluster probes one
of its 2,048 TP groups; groups that span hosts are probed individually up to ``MAX_PROBED_INSTANCES`` per
kind, beyond which the kind is assumed regular and the run says so in a warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.network.maxmin import maxmin_rates
from simulator.network.models.base import CollectiveRequest, PhaseCache, alone_time
from simulator.parallel.plan import GROUP_KINDS, ParallelPlan
from simulator.topology.cluster import Cluster
from simulator.workload.ops import CollectiveKind

# A latency-bound and a bandwidth-bound message (per-rank buffer, bytes): algorithms and their α terms are
# chosen by size (NCCL's tuner), so one size could hide a difference the other shows.
PROBE_BYTES = (4096.0, 256.0 * 2**20)
# Probing a group that spans hosts routes it once; past this many instances of one kind the probe would cost
# more than the simulation it protects (a 16,384-GPU step), and the kind is taken as regular.
MAX_PROBED_INSTANCES = 2048
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


def _probe_ops(kind: str) -> tuple[CollectiveKind, ...]:
    """Collectives whose geometry stands for what a group of ``kind`` runs."""
    if kind == "p2p":  # a pipeline send: the pair itself
        return (CollectiveKind.SEND_RECV,)
    if kind == "ep":
        return (CollectiveKind.ALL_TO_ALL,)
    if kind == "cp":
        return (CollectiveKind.ALL_GATHER, CollectiveKind.SEND_RECV)
    return (CollectiveKind.ALL_REDUCE,)


def _request(
    kind: str, op: CollectiveKind, groups: np.ndarray, nbytes: float, key: tuple[object, ...]
) -> CollectiveRequest:
    if op is CollectiveKind.SEND_RECV and kind != "p2p":  # ring shift (context parallel): j to j+1
        groups = np.stack([groups.ravel(), np.roll(groups, -1, axis=1).ravel()], axis=1)
    return CollectiveRequest(op, groups, nbytes, key)


class _Prober:
    """Fingerprints of group instances and pipeline pairs, memoised by geometry."""

    def __init__(self, cluster: Cluster, cache: PhaseCache) -> None:
        self.cluster = cluster
        self.cache = cache
        host = cluster.host_of_gpu
        dom = cluster.nvlink_domain_of_gpu
        # hosts are interchangeable when every NVLink domain lies inside one host (no torus, no NVL72 rack
        # spanning hosts): then a group inside one host is identified by its members' local indices
        self._host_local_ok = bool(np.all(np.bincount(dom)[dom] <= np.bincount(host)[host]))
        self._memo: dict[tuple[object, ...], tuple[float, ...]] = {}
        self.footprints: dict[str, dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]]] = {}
        self._kind_load: dict[str, np.ndarray] = {}

    def geometry_key(self, members: np.ndarray) -> tuple[object, ...] | None:
        """A key shared by instances that are the same up to which (alike) host they sit on, else None."""
        hosts = self.cluster.host_of_gpu[members]
        if self._host_local_ok and np.all(hosts == hosts[0]):
            return ("host-local", *map(int, self.cluster.local_of_gpu[members]))
        return None

    def alone(self, kind: str, members: np.ndarray) -> tuple[float, ...]:
        """Time of each probe collective on this instance with the network otherwise idle."""
        gkey = self.geometry_key(members)
        memo_key = (kind, gkey) if gkey is not None else (kind, "gpus", *map(int, members))
        hit = self._memo.get(memo_key)
        if hit is None:
            row = members[None, :]
            times = []
            for op in _probe_ops(kind):
                for b in PROBE_BYTES:
                    phases = self.cache.routed(_request(kind, op, row, b, ("probe", op.value, b, *memo_key)))
                    times.append(round(alone_time(phases), _ROUND_DIGITS + 3))
            hit = tuple(times)
            self._memo[memo_key] = hit
            if gkey is None:  # footprint of the bandwidth-bound probe, for cross-kind overlap
                bw = [p for p in phases if p.link_ids.size]
                if bw:
                    first = max(bw, key=lambda p: p.max_flow_bytes)
                    self.footprints.setdefault(kind, {})[tuple(map(int, members))] = (
                        first.link_ids,
                        first.load,
                    )
        return hit

    def shares(self, kind: str, instances: np.ndarray) -> np.ndarray:
        """Max-min rate of each instance's bandwidth-bound probe while all of ``instances`` run at once,
        relative to the fastest (1.0 everywhere when no instance is squeezed more than another)."""
        foot = self.footprints.get(kind, {})
        coflows = [foot.get(tuple(map(int, m))) for m in instances]
        if any(c is None for c in coflows):
            return np.ones(len(instances))
        rates = maxmin_rates(self.cache.capacity, coflows)  # type: ignore[arg-type]
        return np.round(rates / rates.max(), _ROUND_DIGITS)

    def overlap(self, kind: str, members: np.ndarray) -> tuple[float, ...]:
        """How much of every other kind's probed traffic shares this instance's links (Σ over its links of
        its load × the other kind's load ÷ capacity): instances that meet other traffic differently differ."""
        mine = self.footprints.get(kind, {}).get(tuple(map(int, members)))
        if mine is None:
            return ()
        links, load = mine
        return tuple(
            round(
                float(np.dot(load, self._load_of(other)[links] / self.cache.capacity[links])), _ROUND_DIGITS
            )
            for other in sorted(self.footprints)
            if other != kind
        )

    def _load_of(self, kind: str) -> np.ndarray:
        hit = self._kind_load.get(kind)
        if hit is None:
            hit = np.zeros(self.cache.capacity.size)
            for links, load in self.footprints[kind].values():
                np.add.at(hit, links, load)
            self._kind_load[kind] = hit
        return hit


def refine(plan: ParallelPlan, cluster: Cluster, cache: PhaseCache) -> Refinement:
    """Pipeline stage of every rank, split by the network fingerprints of its groups and pipeline pairs."""
    prober = _Prober(cluster, cache)
    stage = plan.coords["pp"]
    if not _regular(cluster):
        if plan.dims.world <= MAX_IRREGULAR_FULL_RANKS:
            return Refinement(np.arange(plan.dims.world, dtype=np.int64), ())
        return Refinement(stage.copy(), ("irregular-fabric",))
    units = _units(plan)  # kind → [instances, members] of ranks (pipeline pairs as kind "p2p")
    unchecked = [k for k, g in units.items() if _too_many(prober, g)]
    checked = {k: g for k, g in units.items() if k not in unchecked}
    alone = {k: [prober.alone(k, m) for m in g] for k, g in checked.items()}  # routes; records footprints
    columns: list[np.ndarray] = [stage]
    for kind, groups in checked.items():
        share = np.ones(len(groups))
        sigs = [tuple(map(int, stage[m])) for m in groups]
        for sig in set(sigs):  # instances on the same stages run at once and may squeeze each other
            idx = [i for i, x in enumerate(sigs) if x == sig]
            if len(idx) > 1:
                share[idx] = prober.shares(kind, groups[idx])
        fps = [(*alone[kind][i], float(share[i]), *prober.overlap(kind, m)) for i, m in enumerate(groups)]
        columns.extend(_rank_columns(kind, groups, fps, plan.dims.world))
    class_of = _classes_of(np.stack(columns, axis=1))
    return Refinement(_renumber(_close(plan, class_of), stage), tuple(unchecked))


def _regular(cluster: Cluster) -> bool:
    """Switched fabric, and every host an NVSwitch host (each GPU on its own switch ports and NIC path)."""
    groups = cluster.meta.get("host_groups")
    builders = {g.get("builder") for g in groups if isinstance(g, dict)} if isinstance(groups, list) else set()
    return cluster.meta.get("routing") == "switched" and builders <= {"nvswitch"}


def _units(plan: ParallelPlan) -> dict[str, np.ndarray]:
    """Every group instance of more than one rank per kind, and the pipeline's stage-to-stage pairs."""
    out = {k: plan.groups(k) for k in GROUP_KINDS if k != "pp" and plan.groups(k).shape[1] > 1}
    if plan.dims.pp > 1:
        stride = plan.dims.world // plan.dims.pp
        ranks = np.arange(plan.dims.world)
        out["p2p"] = np.stack([ranks[:-stride], ranks[stride:]], axis=1)
    return out


def _too_many(prober: _Prober, groups: np.ndarray) -> bool:
    return sum(prober.geometry_key(g) is None for g in groups) > MAX_PROBED_INSTANCES


def _rank_columns(
    kind: str, groups: np.ndarray, fps: list[tuple[float, ...]], world: int
) -> list[np.ndarray]:
    """Fingerprint ids per rank: of its instance; for pipeline pairs, of its send and of its receive."""
    labels: dict[tuple[float, ...], int] = {}
    ids = np.array([labels.setdefault(fp, len(labels)) for fp in fps], dtype=np.int64)
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
