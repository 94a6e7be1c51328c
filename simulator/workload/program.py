"""A per-rank program: ops on streams with dependencies, as the engine runs them."""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.workload.ops import Op

COMPUTE_STREAM = "compute"


@dataclass
class ProgramBuilder:
    """Appends ops in issue order; each op waits for the previous op of its stream and for ``deps``."""

    ops: list[Op] = field(default_factory=list)
    streams: list[str] = field(default_factory=list)
    deps: list[tuple[int, ...]] = field(default_factory=list)

    def add(self, op: Op, stream: str, deps: tuple[int, ...] | list[int] = ()) -> int:
        """Append ``op`` on ``stream``; returns its index."""
        ops = self.ops
        ops.append(op)
        self.streams.append(stream)
        self.deps.append(tuple([d for d in deps if d >= 0]) if deps else ())
        return len(ops) - 1

    def build(self) -> Program:
        """The finished, immutable program."""
        return Program(tuple(self.ops), tuple(self.streams), tuple(self.deps))


@dataclass(frozen=True, eq=False)
class Program:
    """What one rank does in one optimizer step."""

    ops: tuple[Op, ...]
    streams: tuple[str, ...]
    deps: tuple[tuple[int, ...], ...]

    def __len__(self) -> int:
        return len(self.ops)

    def successors(self) -> tuple[list[list[int]], list[int]]:
        """For each op, the ops that wait for it (stream successor and dependents), and how many
        conditions each op waits for."""
        succ: list[list[int]] = [[] for _ in self.ops]
        waits = [0] * len(self.ops)
        last: dict[str, int] = {}
        for i, stream in enumerate(self.streams):
            prev = last.get(stream)
            if prev is not None:
                succ[prev].append(i)
                waits[i] += 1
            last[stream] = i
            for d in self.deps[i]:
                assert d < i, "dependencies must point backwards in issue order"
                if d != prev:
                    succ[d].append(i)
                    waits[i] += 1
        return succ, waits
