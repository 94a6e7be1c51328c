"""Which ranks are simulated, and what a collective or a send of a simulated rank stands for.

Symmetry (docs/design.md): ranks of one *class* run the same program on the same kind of hardware, so the engine
simulates one representative per class. A collective of a representative waits for the representatives of
the classes among its group's members, and the network runs it for every group instance whose members have
the same classes (all 128 data-parallel rings at once), because contention is a property of the whole fabric.
In ``full`` mode every rank is its own class.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from simulator.network.models.base import CollectiveRequest
from simulator.parallel.plan import ParallelPlan
from simulator.workload.ops import Axis, Collective, CollectiveKind, SendRecv


@dataclass(frozen=True, eq=False)
class RankClasses:
    """A class id per rank; the lowest rank of each class represents it."""

    class_of: np.ndarray
    labels: dict[int, str]  # class id → readable label

    @cached_property
    def representatives(self) -> np.ndarray:
        """Representative rank of each class, indexed by class id."""
        n = int(self.class_of.max()) + 1
        reps = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(reps, self.class_of, np.arange(self.class_of.size))
        return reps

    @cached_property
    def multiplicity(self) -> np.ndarray:
        """Number of ranks in each class."""
        return np.bincount(self.class_of)

    def rep_of(self, rank: int) -> int:
        """The representative of ``rank``'s class."""
        return int(self.representatives[self.class_of[rank]])


@dataclass(eq=False)
class GroupResolver:
    """Turns a representative's op into (rendezvous key, participating representatives, network request)."""

    plan: ParallelPlan
    classes: RankClasses
    _coll: dict[tuple[str, int], tuple[tuple[object, ...], tuple[int, ...], np.ndarray, _Siblings]] = field(
        default_factory=dict
    )
    _p2p: dict[tuple[int, int], tuple[np.ndarray, _Siblings]] = field(default_factory=dict)

    @cached_property
    def _stage(self) -> np.ndarray:
        """Pipeline stage of every rank: the ranks of one stage reach each collective together."""
        return self.plan.coords["pp"]

    def collective(
        self, rank: int, op: Collective
    ) -> tuple[tuple[object, ...], tuple[int, ...], CollectiveRequest]:
        """Group identity, participating representatives, and the request covering all its instances."""
        key = (op.group, rank)
        hit = self._coll.get(key)
        if hit is None:
            hit = self._resolve_collective(op.group, rank)
            self._coll[key] = hit
        gkey, parts, groups, (sib, sib_key) = hit
        if op.kind is CollectiveKind.SEND_RECV:  # a ring shift (ring attention): member j sends to j+1
            groups = _ring_shift(groups)
            sib = None if sib is None else _ring_shift(sib)
        return gkey, parts, CollectiveRequest(op.kind, groups, op.bytes, gkey, sib, sib_key)

    def _resolve_collective(
        self, kind: Axis, rank: int
    ) -> tuple[tuple[object, ...], tuple[int, ...], np.ndarray, _Siblings]:
        groups = self.plan.groups(kind)
        members = self.plan.group_of(kind, rank)
        cls = self.classes.class_of
        sig = cls[members]
        same = np.all(cls[groups] == sig[None, :], axis=1)
        instances = groups[same]
        parts = tuple(sorted({int(self.classes.representatives[c]) for c in sig}))
        gkey: tuple[object, ...] = (kind, *map(int, sig)) if not self._is_full else (kind, int(members.min()))
        stages = self._stage[members]
        concurrent = groups[np.all(self._stage[groups] == stages[None, :], axis=1)]
        sib: _Siblings = (None, None)
        if len(concurrent) > len(instances):
            sib = (concurrent, ("siblings", kind, *map(int, stages)))
        return gkey, parts, instances, sib

    @cached_property
    def _is_full(self) -> bool:
        return int(self.classes.multiplicity.max()) == 1

    def peer(self, rank: int, op: SendRecv) -> int:
        """The rank a send goes to (or a receive comes from), ``op.offset`` pipeline stages away."""
        stride = self.plan.dims.world // self.plan.dims.pp
        return rank + op.offset * stride

    def send_request(self, src_rank: int, op: SendRecv) -> CollectiveRequest:
        """Every instance of the stage-to-stage transfer the representative ``src_rank`` stands for."""
        key = (src_rank, op.offset)
        hit = self._p2p.get(key)
        if hit is None:
            hit = self._resolve_p2p(src_rank, op.offset)
            self._p2p[key] = hit
        pairs, (sib, sib_key) = hit
        return CollectiveRequest(
            CollectiveKind.SEND_RECV, pairs, op.bytes, ("p2p", src_rank, op.offset), sib, sib_key
        )

    def _resolve_p2p(self, src_rank: int, offset: int) -> tuple[np.ndarray, _Siblings]:
        stride = self.plan.dims.world // self.plan.dims.pp
        cls = self.classes.class_of
        dst_rank = src_rank + offset * stride
        ranks = np.arange(cls.size)
        dst = ranks + offset * stride
        inside = (dst >= 0) & (dst < cls.size)
        ok = inside & (cls == cls[src_rank])
        ok[ok] &= cls[dst[ok]] == cls[dst_rank]
        concurrent = inside & (self._stage == self._stage[src_rank])
        sib: _Siblings = (None, None)
        if concurrent.sum() > ok.sum():
            key = ("p2p-siblings", int(self._stage[src_rank]), offset)
            sib = (np.stack([ranks[concurrent], dst[concurrent]], axis=1), key)
        return np.stack([ranks[ok], dst[ok]], axis=1), sib


_Siblings = tuple[np.ndarray | None, tuple[object, ...] | None]


def _ring_shift(groups: np.ndarray) -> np.ndarray:
    """Member j of every ring sends to member j+1: ``[pairs, 2]``."""
    return np.stack([groups.ravel(), np.roll(groups, -1, axis=1).ravel()], axis=1)
