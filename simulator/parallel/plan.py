"""The parallel plan: rank ↔ (pp, dp, cp, tp) coordinates, process groups, placement on GPUs.

Rank order follows Megatron-LM's default (``tp`` fastest, then ``cp``, then ``dp``, then ``pp``), so that a
tensor-parallel group occupies consecutive GPUs of one host:

    rank = tp_i + tp · (cp_i + cp · (dp_i + dp · pp_i))

Expert parallelism folds over the ranks of a pipeline stage as Megatron-Core's "MoE parallel folding" does
(Liu et al. 2025, arXiv 2504.14960; ``RankGenerator`` with the expert order tp-ep-dp-pp): a stage's
``tp·cp·dp`` ranks, in rank order, are split into expert tensor parallelism ``etp`` (fastest), then ``ep``,
then expert data parallelism ``edp = tp·cp·dp / (etp·ep)``. With ``etp = tp`` (the default) this is expert
parallelism carved out of data × context: ``ep`` index ``dpcp % ep`` with ``dpcp = cp_i + cp·dp_i``. Rank ``r``
runs on GPU ``r`` (GPUs are numbered host by host).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from simulator.workload.ops import Axis

GROUP_KINDS = tuple(Axis)


@dataclass(frozen=True)
class ParallelDims:
    """Degrees of each parallel dimension; ``world = tp·cp·dp·pp``."""

    tp: int
    pp: int
    dp: int
    cp: int = 1
    ep: int = 1
    etp: int | None = None  # expert tensor parallelism; None: tp (Megatron-Core's default)

    @property
    def expert_tp(self) -> int:
        """Tensor-parallel degree inside the experts."""
        return self.tp if self.etp is None else self.etp

    @property
    def edp(self) -> int:
        """Expert data parallelism: the ranks of a stage holding the same experts."""
        return self.tp * self.cp * self.dp // (self.expert_tp * self.ep)

    @property
    def world(self) -> int:
        """Total number of ranks."""
        return self.tp * self.cp * self.dp * self.pp


@dataclass(frozen=True, eq=False)
class ParallelPlan:
    """Coordinates of every rank and the process groups of every dimension."""

    dims: ParallelDims

    @cached_property
    def coords(self) -> dict[str, np.ndarray]:
        """Per-rank coordinate arrays ``tp``, ``cp``, ``dp``, ``pp``, ``ep``, ``edp`` (index = rank)."""
        d = self.dims
        r = np.arange(d.world, dtype=np.int64)
        tp_i = r % d.tp
        cp_i = (r // d.tp) % d.cp
        dp_i = (r // (d.tp * d.cp)) % d.dp
        pp_i = r // (d.tp * d.cp * d.dp)
        local = r % (d.tp * d.cp * d.dp)  # rank within its pipeline stage
        ep_i, edp_i = (local // d.expert_tp) % d.ep, local // (d.expert_tp * d.ep)
        return {"tp": tp_i, "cp": cp_i, "dp": dp_i, "pp": pp_i, "ep": ep_i, "edp": edp_i}

    @cached_property
    def _grid(self) -> np.ndarray:
        """Ranks as a ``[pp, dp, cp, tp]`` array."""
        d = self.dims
        return np.arange(d.world, dtype=np.int64).reshape(d.pp, d.dp, d.cp, d.tp)

    def groups(self, kind: Axis) -> np.ndarray:
        """Every process group of dimension ``kind`` as an ``[instances, members]`` array of ranks.

        Members are ordered along the dimension (pipeline groups from stage 0 to the last stage).
        """
        d, g = self.dims, self._grid
        if kind == Axis.TP:
            return g.reshape(-1, d.tp)
        if kind == Axis.CP:
            return g.transpose(0, 1, 3, 2).reshape(-1, d.cp)
        if kind == Axis.DP:
            return g.transpose(0, 2, 3, 1).reshape(-1, d.dp)
        if kind == Axis.PP:
            return g.transpose(1, 2, 3, 0).reshape(-1, d.pp)
        if kind == Axis.DPCP:  # dense-gradient reduction group when cp > 1 (Megatron reduces over dp×cp)
            return g.transpose(0, 3, 1, 2).reshape(-1, d.dp * d.cp)
        if kind == Axis.TPCP:
            return g.transpose(0, 1, 2, 3).reshape(-1, d.cp * d.tp)
        if kind in (Axis.EP, Axis.EDP):
            blocks = g.reshape(d.pp, d.edp, d.ep, d.expert_tp)  # a stage's ranks in rank order: etp fastest
            if kind == Axis.EP:
                return blocks.transpose(0, 3, 1, 2).reshape(-1, d.ep)
            return blocks.transpose(0, 3, 2, 1).reshape(-1, d.edp)
        raise KeyError(kind)

    @cached_property
    def _group_index(self) -> dict[Axis, tuple[np.ndarray, np.ndarray]]:
        """Per kind: (instance of each rank, position of each rank in its instance)."""
        out = {}
        for kind in GROUP_KINDS:
            grp = self.groups(kind)
            inst = np.empty(self.dims.world, dtype=np.int64)
            pos = np.empty(self.dims.world, dtype=np.int64)
            inst[grp] = np.arange(grp.shape[0])[:, None]
            pos[grp] = np.arange(grp.shape[1])[None, :]
            out[kind] = (inst, pos)
        return out

    def group_of(self, kind: Axis, rank: int) -> np.ndarray:
        """The members of ``rank``'s group of dimension ``kind``."""
        inst, _ = self._group_index[kind]
        return self.groups(kind)[inst[rank]]

    def peer(self, kind: Axis, rank: int, offset: int) -> int | None:
        """The rank ``offset`` steps along ``rank``'s group ``kind`` (ring for cp, line for pp)."""
        inst, pos = self._group_index[kind]
        members = self.groups(kind)[inst[rank]]
        j = pos[rank] + offset
        if kind == Axis.PP:
            return int(members[j]) if 0 <= j < members.size else None
        return int(members[j % members.size])

    def position(self, kind: Axis, rank: int) -> int:
        """Index of ``rank`` within its group of dimension ``kind``."""
        return int(self._group_index[kind][1][rank])
