"""The simulated timeline: one interval per executed op, per simulated rank and stream."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain

import numpy as np

from simulator.hardware.compute import KERNEL_CLASSES

# bytes, model/hw FLOPs, micro-batch, inline, segments, seconds per kernel class
_ROW_DEFAULTS = (0.0, 0.0, 0.0, -1, 0.0, 0.0, (), ())
_FIELDS = 15


@dataclass
class TraceRecorder:
    """Append-only rows filled by the engine while it runs (one tuple per op: a single append per op is
    the cheapest record in CPython; ``freeze`` turns the rows into columns once)."""

    rows: list[tuple[object, ...]] = field(default_factory=list)

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
        class_s: tuple[float, ...] = (),
    ) -> None:
        """Record one executed op (``category``: a compute Category value or "comm"; ``comm``: the CommKind
        value of a communication, "" for compute; ``class_s``: a compute op's seconds per kernel class)."""
        self.rows.append((rank, stream, name, category, comm, start_s, end_s, nbytes, model_flops, hw_flops,
                          micro_batch, inline_comm_s, inline_hidden_s, segments, class_s))  # fmt: skip

    def add_row(self, row: tuple[object, ...]) -> None:
        """Record one executed op given as the 7 leading fields of ``add`` or all 15, in that order."""
        self.rows.append(row if len(row) == _FIELDS else row + _ROW_DEFAULTS)

    def freeze(self, rank_labels: dict[int, str], rank_multiplicity: dict[int, int]) -> Trace:
        """The finished, immutable trace."""
        cols: list[tuple[object, ...]] = list(zip(*self.rows, strict=True)) if self.rows else [()] * _FIELDS

        def num(i: int, dtype: type) -> np.ndarray:
            return np.asarray(cols[i], dtype=dtype)

        return Trace(
            rank=num(0, np.int64),
            stream=tuple(map(str, cols[1])),
            name=tuple(map(str, cols[2])),
            category=tuple(map(str, cols[3])),
            comm=tuple(map(str, cols[4])),
            start_s=num(5, np.float64),
            end_s=num(6, np.float64),
            bytes=num(7, np.float64),
            model_flops=num(8, np.float64),
            hw_flops=num(9, np.float64),
            micro_batch=num(10, np.int64),
            inline_comm_s=num(11, np.float64),
            inline_hidden_s=num(12, np.float64),
            segments=tuple(cols[13]),  # type: ignore[arg-type]
            class_s=class_matrix(cols[14]),
            rank_labels=dict(rank_labels),
            rank_multiplicity=dict(rank_multiplicity),
        )


def class_matrix(col: Sequence[object]) -> np.ndarray:
    """The ops' seconds per kernel class as one [ops, classes] array (an op without classes: zeros)."""
    n, k = len(col), len(KERNEL_CLASSES)
    try:  # the engine's rows all have a full tuple (communication: zeros): one flat pass
        return np.fromiter(chain.from_iterable(col), np.float64, count=n * k).reshape(n, k)  # type: ignore[arg-type]
    except ValueError:  # hand-recorded rows without classes
        pass
    out = np.zeros((n, k))
    given = [i for i, c in enumerate(col) if c]
    if given:
        out[given] = np.array([col[i] for i in given], dtype=np.float64)
    return out


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
    class_s: np.ndarray  # [op, kernel class] seconds (``KERNEL_CLASSES`` order); zero rows for communication
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
                        float(self.hw_flops[i]), int(self.micro_batch[i]),
                        class_s=tuple(self.class_s[i].tolist()))  # fmt: skip
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
