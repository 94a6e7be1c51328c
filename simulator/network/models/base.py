"""The network-model extension point and what every model shares: collective requests, the choice of
algorithm, and routed phases with their link loads (computed once per distinct collective, then reused).

A request carries ``groups`` (``[instances, members]`` GPU ids: every concurrent copy of the collective
that the simulated rank stands for) and a hashable ``key`` naming those groups, so that geometry work
(routing, link loads) is done once per distinct collective shape, not once per call.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
import simpy

from simulator.errors import ScenarioError
from simulator.hardware.calibration import LinkCalibration
from simulator.network.collectives.base import CollectiveAlgorithm
from simulator.network.maxmin import coflow_link_loads, maxmin_rates
from simulator.network.phases import Phase
from simulator.registry import ALGORITHMS
from simulator.topology.cluster import Cluster
from simulator.workload.ops import CollectiveKind


@dataclass(frozen=True, eq=False)
class CollectiveRequest:
    """One collective (or point-to-point transfer) to time, over every instance it stands for."""

    kind: CollectiveKind
    groups: np.ndarray  # [instances, members] global GPU ids
    nbytes: float  # per-rank buffer size S (nccl-tests definition)
    key: tuple[object, ...]  # hashable identity of ``groups``
    # Every instance that runs concurrently with this one at the same point of the step (all groups of the
    # kind whose members sit on the same pipeline stages), whether or not this request stands for them: a
    # model without dynamic contention times a collective in that company, so that the answer does not
    # depend on how many ranks are simulated (symmetric or ``--full``). ``None``: ``groups`` themselves.
    siblings: np.ndarray | None = None
    siblings_key: tuple[object, ...] | None = None

    def timing_request(self) -> CollectiveRequest:
        """The request over every concurrent sibling instance (itself when it has none)."""
        if self.siblings is None or self.siblings_key is None:
            return self
        return CollectiveRequest(self.kind, self.siblings, self.nbytes, self.siblings_key)


@dataclass(frozen=True, eq=False)
class RoutedPhase:
    """A phase with its flows routed: link loads relative to its largest flow, and its fixed latency."""

    phase: Phase
    link_ids: np.ndarray  # links the phase touches
    load: np.ndarray  # bytes crossing each link ÷ bytes of the largest flow, ÷ protocol efficiency
    max_flow_bytes: float
    latency_s: float
    link_bytes: np.ndarray  # raw bytes crossing each of ``link_ids`` (for link reports)
    alone_rate: float  # bytes/s of the largest flow when nothing else runs


class RouteMemo:
    """Routed phases of one cluster and link calibration, keyed by geometry, shareable between runs.

    A ``PhaseCache`` keys collectives by the engine's group identity, which only means something inside one
    run; this memo keys them by what routing actually depends on: the algorithm's phases are memoised by
    (algorithm, kind, member GPU ids, bytes), and each phase's routing by its flows' (source, destination,
    bytes relative to the largest flow, steps, protocol). Routing, link loads and the alone rate are
    invariant when every flow's bytes scale together, so a phase of another size reuses them (only the
    byte counts scale), and a search that tries many layouts on one cluster routes each distinct group
    shape once (issue #11).
    """

    def __init__(self, cluster: Cluster, calib: LinkCalibration) -> None:
        self.cluster = cluster
        self.calib = calib
        self.capacity = cluster.link_capacity_bytes_per_s
        self._types, self._type_code = cluster.link_type_codes
        self._eff: dict[str, np.ndarray] = {}  # efficiency_key → efficiency per link-type code
        self._alpha = np.array([calib.step_latency(t) for t in self._types])
        self.phases: dict[tuple[object, ...], tuple[Phase, ...]] = {}
        self._routed: dict[tuple[object, ...], tuple[RoutedPhase, np.ndarray]] = {}

    def _efficiency(self, key: str) -> np.ndarray:
        table = self._eff.get(key)
        if table is None:
            table = np.array([self.calib.link_efficiency(t, key) for t in self._types])
            self._eff[key] = table
        return table

    def route(self, phase: Phase) -> RoutedPhase:
        """``phase`` routed: computed once per geometry, scaled to this phase's bytes."""
        max_bytes = float(phase.bytes.max()) if phase.bytes.size else 0.0
        rel = phase.bytes / max_bytes if max_bytes > 0 else phase.bytes
        key = (
            phase.src.tobytes(), phase.dst.tobytes(), np.asarray(rel, dtype=np.float64).tobytes(),
            phase.steps, phase.efficiency_key,
        )  # fmt: skip
        hit = self._routed.get(key)
        if hit is None:
            hit = self._route(phase)
            self._routed[key] = hit
        routed, k = hit
        if routed.phase is phase:
            return routed
        return replace(routed, phase=phase, max_flow_bytes=max_bytes, link_bytes=k * max_bytes)

    def _route(self, phase: Phase) -> tuple[RoutedPhase, np.ndarray]:
        indptr, links = self.cluster.router.paths(phase.src, phase.dst)
        link_ids, k = coflow_link_loads(indptr, links, phase.bytes)
        max_bytes = float(phase.bytes.max()) if phase.bytes.size else 0.0
        codes = self._type_code[link_ids]
        load = k / np.maximum(self._efficiency(phase.efficiency_key)[codes], 1e-9)
        alpha = float(self._alpha[np.unique(codes)].max()) if codes.size else 0.0
        rate = float(maxmin_rates(self.capacity, [(link_ids, load)])[0]) if link_ids.size else float("inf")
        routed = RoutedPhase(phase, link_ids, load, max_bytes, phase.steps * alpha, k * max_bytes, rate)
        return routed, k


class PhaseCache:
    """Routes the phases of each distinct collective once; picks algorithms like NCCL's tuner.

    ``memo`` (optional) shares routed geometry with other runs on the same cluster and calibration.
    """

    def __init__(
        self, cluster: Cluster, calib: LinkCalibration, algorithm: str, memo: RouteMemo | None = None
    ) -> None:
        if memo is not None and (memo.cluster is not cluster or memo.calib is not calib):
            raise ValueError("a RouteMemo is only valid for the cluster and calibration it was built on")
        self.cluster = cluster
        self.calib = calib
        self.algorithm = algorithm
        self.capacity = cluster.link_capacity_bytes_per_s
        self.memo = memo if memo is not None else RouteMemo(cluster, calib)
        self._phases: dict[tuple[object, ...], tuple[RoutedPhase, ...]] = {}
        self._algos: dict[str, CollectiveAlgorithm] = {}
        self._choice: dict[tuple[object, ...], str] = {}
        if algorithm != "auto":
            ALGORITHMS.get(algorithm, field="network.algorithm")

    def _algo(self, name: str) -> CollectiveAlgorithm:
        if name not in self._algos:
            self._algos[name] = ALGORITHMS.get(name)()
        return self._algos[name]

    def routed(self, req: CollectiveRequest) -> tuple[RoutedPhase, ...]:
        """The routed phases of ``req``, computed once per (kind, groups, size, algorithm)."""
        name = self.choose(req)
        key = (req.kind, req.key, req.nbytes, name)
        hit = self._phases.get(key)
        if hit is None:
            hit = self._routed_phases(name, req)
            self._phases[key] = hit
        return hit

    def _routed_phases(self, name: str, req: CollectiveRequest) -> tuple[RoutedPhase, ...]:
        """Route the algorithm's phases; the first also pays the algorithm's fixed launch cost."""
        groups = np.ascontiguousarray(req.groups, dtype=np.int64)
        key = (name, req.kind, groups.shape, groups.tobytes(), req.nbytes)
        algo_phases = self.memo.phases.get(key)
        if algo_phases is None:
            algo_phases = tuple(self._algo(name).phases(req.kind, req.groups, req.nbytes, self.cluster))
            self.memo.phases[key] = algo_phases
        phases = [self.memo.route(p) for p in algo_phases]
        if phases:
            first = phases[0]
            phases[0] = replace(first, latency_s=first.latency_s + self.calib.base_latency(name))
        return tuple(phases)

    def choose(self, req: CollectiveRequest) -> str:
        """The algorithm to use: the configured one, or (``auto``) the fastest alone, as NCCL's tuner."""
        fixed = self._fixed_choice(req)
        if fixed is not None:
            return fixed
        key = (req.kind, req.key, req.nbytes)
        if key not in self._choice:
            best, best_t = "", float("inf")
            for name in ALGORITHMS.names():
                algo = self._algo(name)
                if not algo.auto_candidate(req.kind) or not algo.supports(req.kind, req.groups, self.cluster):
                    continue
                t = alone_time(self._routed_phases(name, req))
                if t < best_t:
                    best, best_t = name, t
            if not best:
                raise ScenarioError(
                    f"no collective algorithm supports {req.kind.value}", field="network.algorithm"
                )
            self._choice[key] = best
        return self._choice[key]

    def _fixed_choice(self, req: CollectiveRequest) -> str | None:
        if req.kind is CollectiveKind.SEND_RECV:
            return "p2p"
        if self.algorithm == "auto":
            return None
        # a configured algorithm that cannot run this kind (e.g. ring all-to-all) defers to auto
        if self._algo(self.algorithm).supports(req.kind, req.groups, self.cluster):
            return self.algorithm
        return None


def alone_time(phases: list[RoutedPhase] | tuple[RoutedPhase, ...]) -> float:
    """Duration of a collective on an otherwise idle network (the α-β fast path)."""
    total = 0.0
    for p in phases:
        total += p.latency_s
        if p.max_flow_bytes > 0 and np.isfinite(p.alone_rate):
            total += p.max_flow_bytes / p.alone_rate
    return total


class NetworkModel(ABC):
    """Times collectives inside a simpy environment."""

    name: ClassVar[str]

    def __init__(self, env: simpy.Environment, cache: PhaseCache) -> None:
        self.env = env
        self.cache = cache
        self._link_bytes = np.zeros(cache.capacity.size)
        self._pending: dict[int, tuple[tuple[RoutedPhase, ...], int]] = {}  # id → (phases, runs not added)

    @property
    def link_bytes(self) -> np.ndarray:
        """Bytes carried per directed link (all instances) by the collectives run so far."""
        for phases, runs in self._pending.values():
            for p in phases:
                np.add.at(self._link_bytes, p.link_ids, p.link_bytes * runs)
        self._pending.clear()
        return self._link_bytes

    @abstractmethod
    def run(self, req: CollectiveRequest, on_done: Callable[[], None]) -> None:
        """Start ``req`` now; call ``on_done`` when its last phase ends."""

    def _account(self, phases: tuple[RoutedPhase, ...]) -> None:
        # counted per routed collective and added when read: one scatter per distinct collective, not per run
        hit = self._pending.get(id(phases))
        self._pending[id(phases)] = (phases, 1 if hit is None else hit[1] + 1)
