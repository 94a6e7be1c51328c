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
    inline_comm_s: list[float] = field(default_factory=list)
    inline_hidden_s: list[float] = field(default_factory=list)
    segments: list[tuple[object, ...]] = field(default_factory=list)

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
        inline_comm_s: float = 0.0,
        inline_hidden_s: float = 0.0,
        segments: tuple[object, ...] = (),
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
        self.inline_comm_s.append(inline_comm_s)
        self.inline_hidden_s.append(inline_hidden_s)
        self.segments.append(segments)

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
            inline_comm_s=np.asarray(self.inline_comm_s, dtype=np.float64),
            inline_hidden_s=np.asarray(self.inline_hidden_s, dtype=np.float64),
            segments=tuple(self.segments),
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
    inline_comm_s: np.ndarray  # host-local collectives folded into a compute op: waited for
    inline_hidden_s: np.ndarray  # ... and hidden under its kernels
    segments: tuple[tuple[object, ...], ...]  # layout of those ops (``Segment``s), empty for plain ops
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

    def expanded(self) -> Trace:
        """The same timeline with every fused op split into its segments: kernel runs on the op's stream,
        inlined collectives on their communication stream (for traces and timelines)."""
        rec = TraceRecorder()
        for i in range(len(self)):
            segs = self.segments[i]
            rank, start = int(self.rank[i]), float(self.start_s[i])
            if not segs:
                rec.add(rank, self.stream[i], self.name[i], self.category[i], self.comm[i], start,
                        float(self.end_s[i]), float(self.bytes[i]), float(self.model_flops[i]),
                        float(self.hw_flops[i]), int(self.micro_batch[i]))  # fmt: skip
                continue
            for seg in segs:
                comm = getattr(seg, "comm", "")
                t0 = start + float(getattr(seg, "offset_s", 0.0))
                t1 = t0 + float(getattr(seg, "duration_s", 0.0))
                stream = f"{comm}-comm" if comm else self.stream[i]
                category = "comm" if comm else self.category[i]
                rec.add(rank, stream, str(getattr(seg, "name", "")), category, comm, t0, t1,
                        micro_batch=int(self.micro_batch[i]))  # fmt: skip
        return rec.freeze(self.rank_labels, self.rank_multiplicity)
