"""The parallel plan: rank ↔ (pp, dp, cp, tp) coordinates, process groups, placement on GPUs.

Rank order follows Megatron-LM's default (``tp`` fastest, then ``cp``, then ``dp``, then ``pp``), so that a
tensor-parallel group occupies consecutive GPUs of one host:

    rank = tp_i + tp · (cp_i + cp · (dp_i + dp · pp_i))

Expert parallelism is carved out of the data×context dimension, as in Megatron-Core: with ``dpcp =
cp_i + cp·dp_i``, a rank's expert-parallel index is ``dpcp % ep`` and ranks sharing ``dpcp // ep`` form one
expert-parallel group. Rank ``r`` runs on GPU ``r`` (GPUs are numbered host by host).
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
        dpcp = cp_i + d.cp * dp_i
        return {"tp": tp_i, "cp": cp_i, "dp": dp_i, "pp": pp_i, "ep": dpcp % d.ep, "edp": dpcp // d.ep}

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
            flat = g.transpose(0, 3, 1, 2).reshape(d.pp, d.tp, d.dp * d.cp)  # [pp, tp, dpcp]
            blocks = flat.reshape(d.pp, d.tp, d.dp * d.cp // d.ep, d.ep)
            if kind == Axis.EP:
                return blocks.reshape(-1, d.ep)
            return blocks.transpose(0, 1, 3, 2).reshape(-1, d.dp * d.cp // d.ep)
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
