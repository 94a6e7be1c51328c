"""The simulated timeline: one interval per executed op, per simulated rank and stream."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TraceRecorder:
    """Append-only columns filled by the engine while it runs (one row per op)."""

    rank: list[int] = field(default_factory=list)
    stream: list[str] = field(default_factory=list)
    name: list[str] = field(default_factory=list)
    category: list[str] = field(default_factory=list)  # compute Category value, or "comm"
    comm: list[str] = field(default_factory=list)  # CommKind value for communication, "" for compute
    start_s: list[float] = field(default_factory=list)
    end_s: list[float] = field(default_factory=list)
    bytes: list[float] = field(default_factory=list)
    model_flops: list[float] = field(default_factory=list)
    hw_flops: list[float] = field(default_factory=list)
    micro_batch: list[int] = field(default_factory=list)

    def add(
        self,
        rank: int,
        stream: str,
        name: str,
        category: str,
        comm: str,
        start_s: float,
        end_s: float,
        nbytes: float = 0.0,
        model_flops: float = 0.0,
        hw_flops: float = 0.0,
        micro_batch: int = -1,
    ) -> None:
        """Record one executed op."""
        self.rank.append(rank)
        self.stream.append(stream)
        self.name.append(name)
        self.category.append(category)
        self.comm.append(comm)
        self.start_s.append(start_s)
        self.end_s.append(end_s)
        self.bytes.append(nbytes)
        self.model_flops.append(model_flops)
        self.hw_flops.append(hw_flops)
        self.micro_batch.append(micro_batch)

    def freeze(self, rank_labels: dict[int, str], rank_multiplicity: dict[int, int]) -> Trace:
        """The finished, immutable trace."""
        return Trace(
            rank=np.asarray(self.rank, dtype=np.int64),
            stream=tuple(self.stream),
            name=tuple(self.name),
            category=tuple(self.category),
            comm=tuple(self.comm),
            start_s=np.asarray(self.start_s, dtype=np.float64),
            end_s=np.asarray(self.end_s, dtype=np.float64),
            bytes=np.asarray(self.bytes, dtype=np.float64),
            model_flops=np.asarray(self.model_flops, dtype=np.float64),
            hw_flops=np.asarray(self.hw_flops, dtype=np.float64),
            micro_batch=np.asarray(self.micro_batch, dtype=np.int64),
            rank_labels=dict(rank_labels),
            rank_multiplicity=dict(rank_multiplicity),
        )


@dataclass(frozen=True, eq=False)
class Trace:
    """Executed intervals ``(rank, stream, op, start, end)`` with the op's bytes and FLOPs.

    ``rank`` is the global rank of the simulated GPU (a class representative under symmetry);
    ``rank_labels`` names it (e.g. ``"pp0 (x128)"``) and ``rank_multiplicity`` says how many real ranks it
    stands for.
    """

    rank: np.ndarray
    stream: tuple[str, ...]
    name: tuple[str, ...]
    category: tuple[str, ...]
    comm: tuple[str, ...]
    start_s: np.ndarray
    end_s: np.ndarray
    bytes: np.ndarray
    model_flops: np.ndarray
    hw_flops: np.ndarray
    micro_batch: np.ndarray
    rank_labels: dict[int, str]
    rank_multiplicity: dict[int, int]

    def __len__(self) -> int:
        return int(self.rank.size)

    @property
    def ranks(self) -> list[int]:
        """Simulated ranks present in the trace, ascending."""
        return sorted(self.rank_labels)

    def select(self, rank: int) -> np.ndarray:
        """Row indices of one rank's ops."""
        return np.flatnonzero(self.rank == rank)
