"""The discrete-event engine: simulated GPUs run their programs' streams on one simpy environment.

Each op starts when the previous op of its stream and all its dependencies have finished (CUDA stream and
event semantics). Compute ops take their compute-model duration. A collective starts when every
participating representative has reached it (collectives on one group are matched in issue order, as NCCL
communicators are); a send and its receive start together once both are posted. Communication durations come
from the network model. Ops are driven by event callbacks rather than one simpy process per stream: the same
semantics at a fraction of the cost per event.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from operator import itemgetter
from typing import Any

import numpy as np
import simpy

from simulator.engine.groups import GroupResolver
from simulator.engine.trace import Trace, TraceRecorder, class_matrix
from simulator.hardware.compute import NO_CLASS_S
from simulator.network.clock import HeapEnvironment, call_later
from simulator.network.models.base import CollectiveRequest, NetworkModel
from simulator.workload.ops import Collective, Compute, SendRecv
from simulator.workload.program import Program

_COMPUTE, _COLLECTIVE, _P2P = 0, 1, 2


def _chain_runs(prog: Program, chain: list[int]) -> dict[int, tuple[tuple[int, ...], tuple[float, ...]]]:
    """Each chain of compute ops (``_RankState.chain``) from its head: its ops and their durations. An op
    inside a chain waits for its predecessor alone, so only a head is ever started."""
    inside = set(chain) - {-1}
    runs: dict[int, tuple[tuple[int, ...], tuple[float, ...]]] = {}
    for i, nxt in enumerate(chain):
        if nxt < 0 or i in inside:
            continue
        run = [i]
        while chain[run[-1]] >= 0:
            run.append(chain[run[-1]])
        runs[i] = (tuple(run), tuple(prog.ops[j].duration_s for j in run))  # type: ignore[union-attr]
    return runs


@dataclass(eq=False)
class _RankState:
    rank: int
    program: Program
    succ: list[list[int]]
    waits: list[int]
    kinds: list[int]  # _COMPUTE, _COLLECTIVE or _P2P per op (one list lookup instead of isinstance tests)
    chain: list[int]  # the compute op that only this compute op starts, and that nothing else waits for; -1
    # head of a chain → (its ops, their durations): what ``_start_chain`` runs, the same every time
    runs: dict[int, tuple[tuple[int, ...], tuple[float, ...]]]
    seq: dict[tuple[object, ...], int] = field(default_factory=lambda: defaultdict(int))
    finished: int = 0


class _Meeting:
    """A collective or send/recv waiting for its participants (a plain slotted class: one is made per
    executed collective and transfer, and a dataclass's field defaults cost more than the rest of it)."""

    __slots__ = ("needed", "arrived", "request")

    def __init__(self, needed: int, request: object = None) -> None:
        self.needed = needed
        self.arrived: list[tuple[_RankState, int]] = []
        self.request = request


class Engine:
    """Runs one training step of every simulated rank."""

    def __init__(
        self,
        env: simpy.Environment,
        programs: dict[int, Program],
        resolver: GroupResolver,
        network: NetworkModel,
    ) -> None:
        self.env = env
        self._later = call_later(env)
        self.resolver = resolver
        self.network = network
        # one (rank, op index, start, end) row per executed op: everything else a trace row holds is the op's
        # own, so ``finish_trace`` takes it from the programs, once per distinct op (issue #11: building and
        # transposing 15-field rows was 15% of the 1,024-GPU GPT-3 step's CPU)
        self._rows: list[tuple[int, int, float, float]] = []
        self._row = self._rows.append
        self.events = 0
        self._meetings: dict[tuple[object, ...], _Meeting] = {}
        self._ranks: dict[int, _RankState] = {}
        self._peer: dict[tuple[int, int], int] = {}  # (rank, offset) → the peer's representative
        self._send: dict[tuple[int, int, float], CollectiveRequest] = {}  # (rank, offset, bytes) → request
        # Ops that only ever wait on timeouts can run a chain of compute ops on one timer (issue #11: two
        # thirds of a Megatron program's ops are compute ops whose only successor is the next one): only on
        # an environment that can fire a timer at an absolute time
        chains = isinstance(env, HeapEnvironment)
        shared: dict[int, tuple[list[list[int]], list[int], list[int], list[int], dict[int, Any]]] = {}  # id → tables
        for rank, prog in programs.items():
            tables = shared.get(id(prog))
            if tables is None:  # ranks running one program (all ranks of a stage under --full) share them
                succ, waits = prog.successors()
                kinds = [_COMPUTE if isinstance(op, Compute) else _COLLECTIVE if isinstance(op, Collective)
                         else _P2P for op in prog.ops]  # fmt: skip
                chain = [-1] * len(kinds)
                if chains:
                    for i, nxt in enumerate(succ):
                        if kinds[i] == _COMPUTE and len(nxt) == 1 and kinds[nxt[0]] == _COMPUTE and waits[nxt[0]] == 1:
                            chain[i] = nxt[0]
                tables = shared[id(prog)] = (succ, waits, kinds, chain, _chain_runs(prog, chain))
            succ, waits, kinds, chain, runs = tables
            self._ranks[rank] = _RankState(rank, prog, succ, list(waits), kinds, chain, runs)

    def run(self) -> None:
        """Run until every op of every rank has finished."""
        for st in self._ranks.values():
            for i, w in enumerate(st.waits):
                if w == 0:
                    self._start(st, i)
        self.env.run()
        stuck = [r for r, st in self._ranks.items() if st.finished < len(st.program)]
        assert not stuck, f"deadlock: ranks {stuck[:8]} did not finish (unmatched collective or send/recv)"

    # --------------------------------------------------------------------------- op lifecycle
    def _start(self, st: _RankState, i: int) -> None:
        kind = st.kinds[i]
        op = st.program.ops[i]
        if kind == _COMPUTE:
            start = self.env.now
            self.events += 1
            if st.chain[i] < 0:
                self._later(op.duration_s, lambda: self._finish_compute(st, i, start))  # type: ignore[union-attr]
            else:
                self._start_chain(st, i, start)
        elif kind == _COLLECTIVE:
            self._arrive_collective(st, i, op)  # type: ignore[arg-type]
        else:
            self._arrive_p2p(st, i, op)  # type: ignore[arg-type]

    def _start_chain(self, st: _RankState, i: int, start: float) -> None:
        """Compute op ``i`` and the chain it alone starts, back to back on one timer: each op starts when the
        one before ends, as op-by-op timers would have it, and nothing else can see the ops before the last
        end (no other op waits for them), so only the last one's end is an event."""
        run, durations = st.runs[i]
        # the op boundaries: start, start + d0, (start + d0) + d1, … (``accumulate`` adds left to right, as
        # op-by-op timers would)
        ends = list(accumulate(durations, initial=start))
        self.events += len(run) - 1
        self.env.call_at(ends[-1], lambda: self._finish_chain(st, run, ends))  # type: ignore[attr-defined]

    def _finish_chain(self, st: _RankState, run: tuple[int, ...], ends: list[float]) -> None:
        waits, row, rank = st.waits, self._row, st.rank
        last = len(run) - 1
        for k in range(last):
            row((rank, run[k], ends[k], ends[k + 1]))
            waits[run[k + 1]] -= 1
        st.finished += last
        self._finish_compute(st, run[-1], ends[last])

    def _finish_compute(self, st: _RankState, i: int, start: float) -> None:
        self._row((st.rank, i, start, self.env.now))
        self._done(st, i)

    def _done(self, st: _RankState, i: int) -> None:
        st.finished += 1
        waits = st.waits
        for j in st.succ[i]:
            waits[j] -= 1
            if not waits[j]:
                self._start(st, j)

    # --------------------------------------------------------------------------- communication
    def _arrive_collective(self, st: _RankState, i: int, op: Collective) -> None:
        gkey, parts, req = self.resolver.collective(st.rank, op)
        seq = st.seq[gkey]
        st.seq[gkey] = seq + 1
        key = (gkey, seq)
        meeting = self._meetings.get(key)
        if meeting is None:
            meeting = _Meeting(needed=len(parts), request=req)
            self._meetings[key] = meeting
        meeting.arrived.append((st, i))
        if len(meeting.arrived) == meeting.needed:
            del self._meetings[key]
            self._launch(meeting, req)

    def _arrive_p2p(self, st: _RankState, i: int, op: SendRecv) -> None:
        pkey = (st.rank, op.offset)
        peer = self._peer.get(pkey)
        if peer is None:
            peer = self._peer[pkey] = self.resolver.classes.rep_of(self.resolver.peer(st.rank, op))
        key = ("p2p", st.rank, peer, op.tag) if op.is_send else ("p2p", peer, st.rank, op.tag)
        meeting = self._meetings.get(key)
        if meeting is None:
            meeting = self._meetings[key] = _Meeting(2)
        meeting.arrived.append((st, i))
        if op.is_send:
            skey = (st.rank, op.offset, op.bytes)
            req = self._send.get(skey)
            if req is None:
                req = self._send[skey] = self.resolver.send_request(st.rank, op)
            meeting.request = req
        if len(meeting.arrived) == 2:
            del self._meetings[key]
            self._launch(meeting, meeting.request)

    def _launch(self, meeting: _Meeting, req: object) -> None:
        start = self.env.now
        self.events += 1
        self.network.run(req, self._finisher(meeting, start))  # type: ignore[arg-type]

    def _finisher(self, meeting: _Meeting, start: float) -> Callable[[], None]:
        def finish() -> None:
            now = self.env.now
            for st, i in meeting.arrived:
                self._row((st.rank, i, start, now))
                self._done(st, i)

        return finish

    def finish_trace(self, labels: dict[int, str], multiplicity: dict[int, int]) -> Trace:
        """The recorded timeline."""
        return _trace(self._rows, {rank: st.program for rank, st in self._ranks.items()}, labels, multiplicity)


def _trace(
    rows: list[tuple[int, int, float, float]],
    programs: dict[int, Program],
    labels: dict[int, str],
    multiplicity: dict[int, int],
) -> Trace:
    """The trace of ``rows`` (rank, op index, start, end): each op's fields tabled once per distinct program
    (ranks share programs), then gathered row by row. The same columns as ``TraceRecorder.freeze`` of rows
    that carried every field: a compute op's own fields, a communication's name, comm kind and bytes with
    zero FLOPs, inline time and kernel classes."""
    if not rows:
        return TraceRecorder().freeze(labels, multiplicity)
    offset: dict[int, int] = {}  # id(program) → its first row in the tables
    tables: list[Program] = []
    for prog in programs.values():
        if id(prog) not in offset:
            offset[id(prog)] = sum(map(len, tables))
            tables.append(prog)
    ops = [op for prog in tables for op in prog.ops]
    compute = [type(op) is Compute for op in ops]
    stream = [s for prog in tables for s in prog.streams]
    name = [op.name for op in ops]
    category = [str(op.category) if c else "comm" for op, c in zip(ops, compute, strict=True)]  # type: ignore[union-attr]
    comm = ["" if c else str(op.comm) for op, c in zip(ops, compute, strict=True)]  # type: ignore[union-attr]
    model = [op.model_flops if c else 0.0 for op, c in zip(ops, compute, strict=True)]  # type: ignore[union-attr]
    hw = [op.hw_flops if c else 0.0 for op, c in zip(ops, compute, strict=True)]  # type: ignore[union-attr]
    inline = [op.inline_comm_s if c else 0.0 for op, c in zip(ops, compute, strict=True)]  # type: ignore[union-attr]
    hidden = [op.inline_hidden_s if c else 0.0 for op, c in zip(ops, compute, strict=True)]  # type: ignore[union-attr]
    segments = [op.segments if c else () for op, c in zip(ops, compute, strict=True)]  # type: ignore[union-attr]
    classes = [op.class_s if c else NO_CLASS_S for op, c in zip(ops, compute, strict=True)]  # type: ignore[union-attr]
    rank_of, index_of, start, end = zip(*rows, strict=True)
    n = len(rows)
    rank = np.fromiter(rank_of, np.int64, count=n)
    base = np.zeros(int(rank.max()) + 1, dtype=np.int64)
    for r, prog in programs.items():
        base[r] = offset[id(prog)]
    at = base[rank] + np.fromiter(index_of, np.int64, count=n)
    pick = at.tolist()

    def gather(col: list[Any]) -> tuple[Any, ...]:
        return (col[pick[0]],) if n == 1 else itemgetter(*pick)(col)

    def num(col: list[Any], dtype: type) -> np.ndarray:
        return np.array(col, dtype=dtype)[at]

    return Trace(
        rank=rank,
        stream=gather(stream),
        name=gather(name),
        category=gather(category),
        comm=gather(comm),
        start_s=np.fromiter(start, np.float64, count=n),
        end_s=np.fromiter(end, np.float64, count=n),
        bytes=num([op.bytes for op in ops], np.float64),
        model_flops=num(model, np.float64),
        hw_flops=num(hw, np.float64),
        micro_batch=num([op.micro_batch for op in ops], np.int64),
        inline_comm_s=num(inline, np.float64),
        inline_hidden_s=num(hidden, np.float64),
        segments=gather(segments),
        class_s=class_matrix(classes)[at],
        rank_labels=dict(labels),
        rank_multiplicity=dict(multiplicity),
    )
