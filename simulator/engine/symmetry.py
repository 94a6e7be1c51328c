"""Rank classes of the symmetry reduction: ranks that run the same program *and* that the network treats alike.

docs/design.md ("Symmetry"): the engine simulates one representative per class and lets a representative's
collective stand for every group instance whose members have the same classes, moved as one lockstep coflow.
That is exact only if those instances would each take the same time on their own. Pipeline stage alone does
not guarantee it: on a DGX-1 cube-mesh some GPU pairs have two NVLinks and others one, on a torus a group's
position changes its hops, on an oversubscribed fat-tree a data-parallel ring may or may not leave its leaf,
and on a host with one NIC per two GPUs two rings share a NIC. So the classes start from the pipeline stage
and are refined by a *network fingerprint* of every group instance a rank belongs to: its latency terms, its
bandwidth time alone, and its bandwidth time beside the instances of the same kind that reach the collective
with it; and of every pipeline send it makes or receives, at each stage offset the schedule sends to (±1, and
the interleaved schedule's wrap between the last stage and the first): the same terms beside all pipeline
sends, and the company the send keeps on the links it shares with other pipeline sends
(``pipeline_fingerprints``). Ranks whose fingerprints differ become separate classes (simulated separately),
so the reduced run equals ``--full``; on regular fabrics every fingerprint agrees and the reduction keeps one
rank per stage.

What is not fingerprinted: a group instance or send sharing a link with *another kind* of traffic (a
data-parallel reduce-scatter beside a pipeline send). On GPT-3 175B over 1,024 A100 (and its 64-node cut in
``tests/test_symmetry.py``) that changes some ranks' timelines under ``--full`` (118 of the cut's 512) but
not the step, its breakdown or the communication per kind; colouring every kind's links together split the
1,024 ranks into 512 classes (a reduced run as slow as ``--full``). And where exact classes would be more
than ``MAX_CLASS_FRACTION`` of the ranks (and more than ``MIN_CLASS_BUDGET``), the forward sends' load
alone is fingerprinted (as before the wrap was) and the run warns.

Cost: each kind's probes are routed once over all its instances (as the symmetric run routes them) and split
by instance with numpy, so the check adds a few routed collectives per kind, whatever the cluster size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulator.network.models.base import CollectiveRequest, PhaseCache
from simulator.parallel.plan import GROUP_KINDS, ParallelPlan
from simulator.parallel.schedules.base import Schedule
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
# A link whose users at their uncontended rates fill it to within this much of its capacity is not shared
# (rounding of capacity × efficiency products; a real over-subscription is larger by orders of magnitude).
_FILL_RTOL = 1e-9
# Beyond this share of the ranks in classes the reduced run stops paying for itself (it costs that share of
# --full and more): then pipeline sends are fingerprinted by their forward sends' load alone and the run warns.
# Measured: GPT-3 175B on 1,024 A100 needs 160 classes (16%) to equal --full; the 530B layout of
# scenarios/search on 5,040 A100 would take 2,205 (44%), 181 s instead of 3.4 s.
MAX_CLASS_FRACTION = 0.25
# ... unless there are no more classes than this, whatever the share: small clusters afford exact classes
# (the 160 of GPT-3 175B on 1,024 A100 simulate in 8 s CPU on a loaded 2-core machine, BENCHMARKS.md).
MIN_CLASS_BUDGET = 256
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


def pipeline_offsets(schedule: Schedule, stages: int, chunks: int) -> tuple[int, ...]:
    """Every stage offset a pipeline send goes (activations to the next virtual stage, gradients to the
    previous one), as ``program_builder`` computes it: ``stage_of(peer) - stage``. With one chunk per stage
    these are ±1; Megatron's interleaving adds the wrap from the last stage to the first and back
    (±(stages - 1)), which crosses the fabric on other paths than the ±1 pairs."""
    forward = {
        schedule.stage_of(v + 1, stages) - schedule.stage_of(v, stages) for v in range(stages * chunks - 1)
    }
    return tuple(sorted((forward | {-o for o in forward}) - {0}))


def _probe_ops(kind: str) -> tuple[CollectiveKind, ...]:
    """Collectives whose geometry stands for what a group of ``kind`` runs."""
    if kind == Axis.EP:
        return (CollectiveKind.ALL_TO_ALL,)
    if kind == Axis.CP:
        return (CollectiveKind.ALL_GATHER, CollectiveKind.SEND_RECV)
    return (CollectiveKind.ALL_REDUCE,)


def _request(
    kind: str, op: CollectiveKind, groups: np.ndarray, nbytes: float, key: tuple[object, ...]
) -> CollectiveRequest:
    if op is CollectiveKind.SEND_RECV:  # ring shift (context parallel): j to j+1
        groups = np.stack([groups.ravel(), np.roll(groups, -1, axis=1).ravel()], axis=1)
    return CollectiveRequest(op, groups, nbytes, key)


class _Prober:
    """Network fingerprints of every instance of a kind at once: the kind's probe collectives routed once over
    all instances (as the symmetric run routes them), then split by instance."""

    def __init__(self, cluster: Cluster, cache: PhaseCache) -> None:
        self.cluster = cluster
        self.cache = cache
        self._types, self._type_of_link = cluster.link_type_codes
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
        owner[cluster.gpu_node_index[groups]] = np.arange(len(groups))[:, None]
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

    def pipeline_fingerprints(self, pairs: np.ndarray, offset: np.ndarray, stage: np.ndarray) -> np.ndarray:
        """``[pairs, features]`` (integers) of every pipeline send (``pairs[i]`` = sender, receiver;
        ``offset[i]``: its stage offset): its latency terms, its bandwidth time alone and beside every other
        pipeline send, and the company it keeps on the links it shares with a wrap.

        Unlike a group's instances, the pipeline sends of *every* stage and offset are in flight together
        (in the 1F1B steady state each stage sends forward and backward at once, and an interleaved
        schedule's wrap from the last stage to the first runs beside them), so all are routed at once. On
        D-mod-k routing (Zahavi 2010) only shift permutations are free of collisions, and the wrap is not a
        shift of the ±1 sends: on GPT-3 175B, tp 8 · pp 8 interleaved · dp 16 on the DGX A100 SuperPOD, the
        wrap from node 56 to node 0 leaves the SU2 rail leaf on the same spine port as the stage-6 send from
        node 52 to node 60, while the wrap from node 60 to node 4 runs alone (measured under ``--full``;
        with one class for both, the reduced step was 0.27% slower). The largest load on a link does not
        tell these apart (a GPU's forward and backward sends share its NIC path everywhere), so the last
        feature is the company: one round of colour refinement (Weisfeiler–Leman) over sends and links. A
        link's colour is the multiset of (offset, sender stage, load) of its sends; a send's company is the
        multiset of the colours of the links it shares, counting only links that its users at their
        uncontended rates would over-fill (a max-min rate never exceeds the uncontended one, so any other
        link never slows anyone) and that a send of offset other than ±1 crosses. The ±1 sends of all
        stages are the two shifts r → r ± (ranks per stage), for which D-mod-k is built, and their load
        alone describes them: counting their company too split GPT-1T's 64 classes (3,072 GPUs, pp 64,
        1F1B) into 576 without moving its step by one bit. Multisets are hashed as sums of SplitMix64
        values: equal multisets always get equal ids."""
        cluster, cap = self.cluster, self.cache.capacity
        stages = int(stage.max()) + 1
        (phase,) = self.cache._algo("p2p").phases(CollectiveKind.SEND_RECV, pairs, PROBE_BYTES, cluster)
        indptr, links = cluster.router.paths(phase.src, phase.dst)
        flow = np.repeat(np.arange(phase.num_flows), np.diff(indptr))  # one flow per pair, in order
        rel = phase.bytes[flow] / np.maximum(self._efficiency(phase.efficiency_key)[links], 1e-9) / cap[links]
        latency, alone, beside = (np.zeros(len(pairs)) for _ in range(3))
        np.maximum.at(latency, flow, self._alpha[links])
        np.maximum.at(alone, flow, rel)
        total = np.bincount(links, weights=rel, minlength=cap.size)
        np.maximum.at(beside, flow, total[links])
        # company; a flow crosses a link once, so (flow, link) rows are distinct
        fill = rel / alone[flow]  # share of the link the send takes at its uncontended rate
        over = np.bincount(links, weights=fill, minlength=cap.size) > 1.0 + _FILL_RTOL
        users = np.bincount(links, minlength=cap.size)
        wrap = np.bincount(links, weights=np.abs(offset[flow]) != 1, minlength=cap.size) > 0
        shared = over[links] & (users[links] > 1) & wrap[links]
        q = _quantise(rel[:, None])[:, 0].astype(np.uint64)
        code = ((offset[flow] + stages) * stages + stage[pairs[flow, 0]]).astype(np.uint64)
        tag = _mix64(code ^ _mix64(q))
        link_hash = np.zeros(cap.size, dtype=np.uint64)
        np.add.at(link_hash, links, tag)  # wraps modulo 2**64 by design
        company = np.zeros(len(pairs), dtype=np.uint64)
        np.add.at(company, flow[shared], _mix64(link_hash[links[shared]] ^ tag[shared]))
        floats = _quantise(np.stack([phase.steps * latency, alone, beside], axis=1)).astype(np.int64)
        return np.concatenate([floats, company.view(np.int64)[:, None]], axis=1)


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele, Lea & Flood 2014) on uint64, wrapping by design: sums of these values
    stand for multisets (equal multisets, equal sums; different ones collide with probability ~2**-64)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def refine(
    plan: ParallelPlan, cluster: Cluster, cache: PhaseCache, p2p_offsets: tuple[int, ...] = (1, -1)
) -> Refinement:
    """Pipeline stage of every rank, split by the network fingerprints of its groups and of its pipeline
    sends at every stage offset they go (``pipeline_offsets``), and by the company these keep on links."""
    prober = _Prober(cluster, cache)
    stage = plan.coords["pp"]
    if not _regular(cluster):
        if plan.dims.world <= MAX_IRREGULAR_FULL_RANKS:
            return Refinement(np.arange(plan.dims.world, dtype=np.int64), ())
        return Refinement(stage.copy(), ("irregular-fabric",))
    world = plan.dims.world
    columns: list[np.ndarray] = [stage]
    for kind, groups in _units(plan).items():  # kind → [instances, members] of ranks
        ids = _classes_of(_quantise(prober.fingerprints(kind, groups, stage)))
        col = np.empty(world, dtype=np.int64)
        col[groups] = ids[:, None]
        columns.append(col)
    fine = _close(plan, _classes_of(np.stack(columns + _send_columns(prober, plan, p2p_offsets), axis=1)), p2p_offsets)
    if fine.max() + 1 <= max(world * MAX_CLASS_FRACTION, MIN_CLASS_BUDGET):
        return Refinement(_renumber(fine, stage), ())
    # too many classes for the reduction to pay: fingerprint the forward (+1) sends alone, by their load (no
    # wrap, no company: the 35 classes of the 530B search scenario, as before issue #10), and say so
    coarse = _classes_of(np.stack(columns + _send_columns(prober, plan, (1,)), axis=1))
    return Refinement(_renumber(_close(plan, coarse, p2p_offsets), stage), ("pipeline sends",))


def _send_columns(prober: _Prober, plan: ParallelPlan, p2p_offsets: tuple[int, ...]) -> list[np.ndarray]:
    """Per stage offset, the fingerprint id of each rank's send and of its receive (-1: none)."""
    world = plan.dims.world
    pairs, which = _pipeline_pairs(plan, p2p_offsets)
    if not len(pairs):
        return []
    offset = np.asarray(p2p_offsets, dtype=np.int64)[which]
    ids = _classes_of(prober.pipeline_fingerprints(pairs, offset, plan.coords["pp"]))
    columns = []
    for k in range(len(p2p_offsets)):
        mine = which == k
        send, recv = np.full(world, -1, dtype=np.int64), np.full(world, -1, dtype=np.int64)
        send[pairs[mine, 0]] = ids[mine]
        recv[pairs[mine, 1]] = ids[mine]
        columns += [send, recv]
    return columns


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
    """Every group instance of more than one rank per kind (pipeline pairs: ``_pipeline_pairs``)."""
    return {k: plan.groups(k) for k in GROUP_KINDS if k != Axis.PP and plan.groups(k).shape[1] > 1}


def _pipeline_pairs(plan: ParallelPlan, p2p_offsets: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Every (sender, receiver) pair of the pipeline's sends, at each stage offset, and its offset's index."""
    if plan.dims.pp == 1 or not p2p_offsets:
        return np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
    stride = plan.dims.world // plan.dims.pp
    ranks = np.arange(plan.dims.world)
    pairs, which = [], []
    for k, offset in enumerate(p2p_offsets):
        peer = ranks + offset * stride
        inside = (peer >= 0) & (peer < ranks.size)
        pairs.append(np.stack([ranks[inside], peer[inside]], axis=1))
        which.append(np.full(int(inside.sum()), k, dtype=np.int64))
    return np.concatenate(pairs), np.concatenate(which)


def _classes_of(rows: np.ndarray) -> np.ndarray:
    """One id per distinct row: its rank among the distinct rows in lexicographic order, as
    ``np.unique(rows, axis=0, return_inverse=True)`` gives it, built a column at a time (the rank of a row's
    prefix times the column's distinct count plus the rank of its value orders rows exactly as the prefix
    then the value), which sorts integers instead of 131,072 structured rows (issue #11)."""
    rows = rows.reshape(len(rows), -1)
    ids = np.zeros(len(rows), dtype=np.int64)
    for j in range(rows.shape[1]):
        values, col = np.unique(rows[:, j], return_inverse=True)
        _, ids = np.unique(ids * values.size + col.ravel(), return_inverse=True)
        ids = ids.ravel()
    return ids.astype(np.int64)


def _close(plan: ParallelPlan, class_of: np.ndarray, p2p_offsets: tuple[int, ...]) -> np.ndarray:
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
            for offset in p2p_offsets:
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
