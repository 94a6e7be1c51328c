"""The discrete-event engine: simulated GPUs run their programs' streams on one simpy environment.

Each op starts when the previous op of its stream and all its dependencies have finished (CUDA stream and
event semantics). Compute ops take their compute-model duration. A collective starts when every
participating representative has reached it (collectives on one group are matched in issue order, as NCCL
communicators are); a send and its receive start together once both are posted. Communication durations come
from the network model. Ops are driven by event callbacks rather than one simpy process per stream: the same
semantics at a fraction of the cost per event.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import simpy
from simpy.events import NORMAL

from simulator.engine.groups import GroupResolver
from simulator.engine.trace import Trace, TraceRecorder
from simulator.hardware.compute import NO_CLASS_S
from simulator.network.models.base import CollectiveRequest, NetworkModel
from simulator.workload.ops import Collective, Compute, SendRecv
from simulator.workload.program import Program


class _Timer:
    """What ``HeapEnvironment.timeout`` returns: the callbacks to run when it fires."""

    __slots__ = ("callbacks",)

    def __init__(self) -> None:
        self.callbacks: list[Callable[[Any], None]] | None = []


class HeapEnvironment(simpy.Environment):
    """A simpy environment for models that only ever wait on timeouts (the engine and the analytical and
    flow network models do): the same event order as simpy, (time, priority, insertion order), without
    the cost of simpy's event objects, so that a step replays exactly as on ``simpy.Environment``."""

    def timeout(self, delay: float = 0, value: Any = None) -> _Timer:  # type: ignore[override]
        """A timer firing ``delay`` seconds from now (``value`` is not supported)."""
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        assert value is None, "HeapEnvironment timers carry no value"
        timer = _Timer()
        heapq.heappush(self._queue, (self._now + delay, NORMAL, next(self._eid), timer))  # type: ignore[arg-type,misc]
        return timer

    def timer_at(self, when: float) -> _Timer:
        """A timer firing at absolute time ``when`` (not before now): a chain of ops computes its end as
        the same float sums as op-by-op timers would, ``((now + d1) + d2) + …``, and must fire exactly then."""
        if when < self._now:
            raise ValueError(f"time {when} is in the past (now {self._now})")
        timer = _Timer()
        heapq.heappush(self._queue, (when, NORMAL, next(self._eid), timer))  # type: ignore[arg-type,misc]
        return timer

    def run(self, until: Any = None) -> None:
        """Run until no timer is left (``until`` is not supported)."""
        assert until is None, "HeapEnvironment runs to completion"
        queue, pop = self._queue, heapq.heappop
        while queue:
            self._now, _, _, timer = pop(queue)
            callbacks, timer.callbacks = timer.callbacks, None  # type: ignore[assignment]
            for callback in callbacks:  # type: ignore[union-attr]
                callback(timer)


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
        self.resolver = resolver
        self.network = network
        self.trace = TraceRecorder()
        self._row = self.trace.rows.append  # one append per executed op
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
                self.env.timeout(op.duration_s).callbacks.append(  # type: ignore[union-attr]
                    lambda _ev: self._finish_compute(st, i, start)
                )
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
        self.env.timer_at(ends[-1]).callbacks.append(  # type: ignore[attr-defined]
            lambda _ev: self._finish_chain(st, run, ends)
        )

    def _finish_chain(self, st: _RankState, run: tuple[int, ...], ends: list[float]) -> None:
        # rows carry the category and comm kind as their StrEnum members: ``TraceRecorder.freeze`` turns them
        # into plain strings column by column (``str`` of a StrEnum is its value), cheaper than ``.value`` per op
        waits, ops, streams, row, rank = st.waits, st.program.ops, st.program.streams, self._row, st.rank
        last = len(run) - 1
        for k in range(last):
            i = run[k]
            op: Compute = ops[i]  # type: ignore[assignment]
            row((
                rank, streams[i], op.name, op.category, "", ends[k], ends[k + 1],
                op.bytes, op.model_flops, op.hw_flops, op.micro_batch,
                op.inline_comm_s, op.inline_hidden_s, op.segments, op.class_s,
            ))  # fmt: skip
            waits[run[k + 1]] -= 1
        st.finished += last
        self._finish_compute(st, run[-1], ends[last])

    def _finish_compute(self, st: _RankState, i: int, start: float) -> None:
        op: Compute = st.program.ops[i]  # type: ignore[assignment]
        self._row((
            st.rank, st.program.streams[i], op.name, op.category, "", start, self.env.now,
            op.bytes, op.model_flops, op.hw_flops, op.micro_batch,
            op.inline_comm_s, op.inline_hidden_s, op.segments, op.class_s,
        ))  # fmt: skip
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
                op: Collective | SendRecv = st.program.ops[i]  # type: ignore[assignment]
                self._row((st.rank, st.program.streams[i], op.name, "comm", op.comm, start, now,
                           op.bytes, 0.0, 0.0, op.micro_batch, 0.0, 0.0, (), NO_CLASS_S))  # fmt: skip
                self._done(st, i)

        return finish

    def finish_trace(self, labels: dict[int, str], multiplicity: dict[int, int]) -> Trace:
        """The recorded timeline."""
        return self.trace.freeze(labels, multiplicity)
