"""The flow-level network model: concurrent phases share link bandwidth max-min fairly.

Every phase in flight is a coflow (its flows move in lockstep). A phase whose links no other phase in flight
uses runs at its uncontended rate; when phases share links, the rates of all contending phases are
recomputed by progressive filling (``maxmin.py``) each time one of them starts or ends, and their
completions are rescheduled. Two observations keep this cheap at scale: most collectives (tensor-parallel
all-reduces on a host's NVLink) share no link with anything else, so they never enter the max-min
computation; and rate allocations are memoised by the set of contending phases, because a training step
repeats the same few combinations (a DP bucket beside a pipeline send …) thousands of times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import count
from operator import attrgetter

import numpy as np
import simpy

from simulator.network.clock import call_later
from simulator.network.maxmin import compact_ids, distinct_columns, filling_with_caps, maxmin_rates
from simulator.network.models.base import CollectiveRequest, NetworkModel, PhaseCache, RoutedPhase
from simulator.registry import NETWORK_MODELS

_REL_EPS = 1e-9
# Slack of the feasibility test at uncontended rates: a phase alone fills its bottleneck exactly, up to
# rounding; a real over-subscription is larger by orders of magnitude.
_FEASIBLE_RTOL = 1e-12
# A phase within this much time of its end is finished: below float resolution at the current clock,
# an exact-zero test could spin on a timer that no longer advances time. The bound is relative to the clock
# (a few ulps of ``now``; issue #12: a 1 ns absolute bound hung once ulp(now) passed it), 1 ns near zero.
_TIME_EPS_S = 1e-9
_CLOCK_ULPS = 8 * float(np.finfo(np.float64).eps)
_BY_KEY = attrgetter("key", "ident")  # contending transfers in memo order: by phase key, then arrival


@dataclass(eq=False, slots=True)
class _Transfer:
    """A collective in flight: its phases, the current one, and what its largest flow still has to move."""

    phases: tuple[RoutedPhase, ...]
    on_done: Callable[[], None]
    ident: int
    current: RoutedPhase  # ``phases[index]`` (an attribute, not a property: read several times per event)
    index: int = 0
    remaining: float = 0.0
    rate: float = 0.0
    since: float = 0.0  # time at which ``remaining`` was last brought up to date
    version: int = 0  # bumps when the completion timer is rescheduled
    contended: bool = False
    key: int = field(default=-1)  # memo key of the current phase

    def catch_up(self, now: float) -> None:
        """Bring ``remaining`` to ``now`` at the current rate."""
        self.remaining -= self.rate * (now - self.since)
        self.since = now


@NETWORK_MODELS.register("flow")
class FlowNetwork(NetworkModel):
    """Fluid max-min sharing between concurrent collectives."""

    name = "flow"

    def __init__(self, env: simpy.Environment, cache: PhaseCache) -> None:
        super().__init__(env, cache)
        self._later = call_later(env)
        self._ids = count()
        self._active: dict[int, _Transfer] = {}
        self._contended: dict[int, _Transfer] = {}
        self._link_users = np.zeros(cache.capacity.size, dtype=np.int32)
        # the isolated transfer last entered on each link: while it is active its links are its own, so a
        # newcomer finds the isolated transfers it now shares links with here, without scanning every active
        # transfer (issue #11: ``--full`` has hundreds in flight)
        self._iso_owner = np.full(cache.capacity.size, -1, dtype=np.int64)
        self._rates: dict[tuple[int, ...], np.ndarray] = {}
        self._fits: dict[int, bool] = {}  # id(phase) → _private_fits (phases kept alive by _phase_refs)
        self._unfit = 0  # contending transfers whose phase fails _private_fits
        self._phase_keys: dict[int, int] = {}
        self._phase_refs: list[RoutedPhase] = []
        self._own_levels: list[np.ndarray] = []  # per phase key: capacity / load on each of its links
        # scratch of the shared-link compaction, one slot per link, reset after each use: no temporaries
        # the size of the network per reallocation (allocations of that size fault fresh pages every time)
        self._marked = np.zeros(cache.capacity.size, dtype=bool)
        self._slot = np.zeros(cache.capacity.size, dtype=np.int64)
        self._cap_tol = cache.capacity * (1.0 + _FEASIBLE_RTOL)
        self._by_request: dict[int, tuple[CollectiveRequest, tuple[RoutedPhase, ...]]] = {}

    def run(self, req: CollectiveRequest, on_done: Callable[[], None]) -> None:
        """Start ``req``: pay the first phase's latency, then join the fluid."""
        hit = self._by_request.get(id(req))
        if hit is None or hit[0] is not req:
            # the engine reuses one request per (rank, send) and per group: look its phases up by identity,
            # not by rebuilding the cache key (issue #11: ``--full`` launches ~570,000 sends on 1,024 GPUs)
            hit = self._by_request[id(req)] = (req, self.cache.routed(req))
        phases = hit[1]
        self._account(phases)
        self._start_phase(_Transfer(phases, on_done, next(self._ids), phases[0]))

    # ---------------------------------------------------------------- phase lifecycle
    def _start_phase(self, tr: _Transfer) -> None:
        p = tr.current
        if p.latency_s > 0:
            self._later(p.latency_s, lambda: self._enter(tr))
        else:
            self._enter(tr)

    def _enter(self, tr: _Transfer) -> None:
        p = tr.current
        if p.max_flow_bytes <= 0 or p.link_ids.size == 0:
            self._next_phase(tr)
            return
        now = self.env.now
        tr.remaining, tr.since, tr.key = p.max_flow_bytes, now, self._key_of(p)
        self._active[tr.ident] = tr
        ids, link_users = p.link_ids, self._link_users
        # one gather of the phase's users serves both branches (a data-parallel phase at 65,536 GPUs
        # crosses ~25,000 links: each pass over them counts, issue #11)
        users = link_users[ids]
        # every link free (most phases): alone, at its uncontended rate (count_nonzero: a third of the cost
        # of .any() on a phase's few dozen links, numpy's reduction set-up dominating)
        if not np.count_nonzero(users):
            link_users[ids] = 1
            tr.rate = p.alone_rate
            self._iso_owner[ids] = tr.ident
            self._schedule(tr)
            return
        users += 1  # as ``link_users[ids] += 1`` (numpy's fancy ``+=`` is this gather, add and scatter)
        link_users[ids] = users
        self._contend(tr)
        tr.rate = 0.0  # no timer for this phase yet: no max-min rate is 0, so it gets one below
        for ident in sorted(set(self._iso_owner[ids[users > 1]].tolist())):
            other = self._active.get(ident)  # an isolated phase whose links the newcomer now shares
            if (
                other is not None
                and not other.contended
                and self._link_users[other.current.link_ids].max() > 1
            ):
                other.catch_up(now)
                self._contend(other)
        self._reallocate()

    def _finish(self, tr: _Transfer) -> None:
        del self._active[tr.ident]
        if tr.contended:
            self._link_users[tr.current.link_ids] -= 1
            del self._contended[tr.ident]
            tr.contended = False
            self._unfit -= not self._private_fits(tr.current)
            self._reallocate()
        else:  # an isolated phase's links are its own (a newcomer on one of them would have made it contended)
            self._link_users[tr.current.link_ids] = 0
        self._next_phase(tr)

    def _contend(self, tr: _Transfer) -> None:
        tr.contended = True
        self._contended[tr.ident] = tr
        self._unfit += not self._private_fits(tr.current)

    def _next_phase(self, tr: _Transfer) -> None:
        tr.index += 1
        if tr.index < len(tr.phases):
            tr.current = tr.phases[tr.index]
            self._start_phase(tr)
        else:
            tr.on_done()

    # ---------------------------------------------------------------- rates and timers
    def _key_of(self, p: RoutedPhase) -> int:
        k = self._phase_keys.get(id(p))
        if k is None:
            k = len(self._phase_refs)
            self._phase_keys[id(p)] = k
            self._phase_refs.append(p)  # keeps the phase alive so that its id() stays unique
            self._own_levels.append(self.cache.capacity[p.link_ids] / p.load)
        return k

    def _reallocate(self) -> None:
        """Max-min rates of every contending phase, then their completion timers."""
        if not self._contended:
            return
        now = self.env.now
        trs = sorted(self._contended.values(), key=_BY_KEY)
        memo = tuple(t.key for t in trs)
        rates = self._rates.get(memo)
        if rates is None:
            rates = self._rates_on_shared_links(trs)
            self._rates[memo] = rates
        for t, r in zip(trs, rates, strict=True):
            rate = float(r)
            if rate == t.rate:  # its timer already fires when it ends at this rate
                continue
            t.catch_up(now)
            t.rate = rate
            self._schedule(t)

    def _rates_on_shared_links(self, trs: list[_Transfer]) -> np.ndarray:
        """Max-min rates of the contending phases ``trs``, computed on the links they share.

        A link only one active phase crosses (``_link_users`` 1; every phase on a link two cross is
        contended) constrains that phase alone: progressive filling saturates it at the level
        capacity / load, so a phase's private links act as one private link at their smallest such level
        (``maxmin_rates``' rate cap), and at the phase's uncontended rate they are never over-filled (it is
        their minimum level). Both steps give the rates of the whole-link computation bit for bit (the same
        levels, summed in the same order on each shared link) at the cost of the shared links: on the
        Llama 3 405B step of ``benchmarks/bench_scaling.py`` about half of the (phase, link) entries at
        16,384 and 65,536 GPUs (the data-parallel rings of all stages meet on the upper tiers, issue #11).
        Phases whose ``_private_fits`` fails (built outside ``RouteMemo``) take the whole-link computation.

        The set's entries are split in one pass over their concatenation, not phase by phase: a 530B
        search confirmation (tp8 pp7 dp90) has ~130 contending phases of ~170 links each, ~40 shared
        after the distinct columns, so filling on the shared links alone is ~30x smaller than on every
        link, and a per-phase split would cost more numpy calls than it saves (issue #11)."""
        if self._unfit:
            return self._whole_link_rates(trs)
        cap = self.cache.capacity
        cur = [t.current for t in trs]
        sizes = np.array([p.link_ids.size for p in cur], dtype=np.int64)
        rows = np.repeat(np.arange(len(cur)), sizes)
        at = np.concatenate([p.link_ids for p in cur])
        k = np.concatenate([p.load for p in cur])
        shared = self._link_users[at] > 1
        alone = np.array([p.alone_rate for p in cur])
        s_rows, s_at, s_k = rows[shared], at[shared], k[shared]
        used, col = self._compact(s_at)
        # the alone test on the shared links (private ones fit: _private_fits), as _fit_alone sums them
        if not np.any(
            np.bincount(col, weights=alone[s_rows] * s_k, minlength=used.size) > self._cap_tol[used]
        ):
            return alone
        if len(cur) == 1:
            return self._whole_link_rates(trs)
        # each phase's private links act as one at their smallest level (min is exact in any order; a phase
        # has at least one link, and one whose links are all shared gets inf, as ``initial=np.inf``)
        levels = np.concatenate([self._own_levels[t.key] for t in trs])
        levels[shared] = np.inf
        private = np.minimum.reduceat(levels, np.cumsum(sizes) - sizes)
        first = distinct_columns(s_rows, col, s_k, cap[used])  # the shared links' distinct columns
        return filling_with_caps(cap[used[first]], len(cur), s_rows, col, s_k, first, private)

    def _compact(self, links: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``compact_ids(links, n_links)`` on the scratch arrays: the sorted distinct ids and the inverse."""
        marked, slot = self._marked, self._slot
        marked[links] = True
        used = np.flatnonzero(marked)
        marked[used] = False
        slot[used] = np.arange(used.size)
        return used, slot[links]

    def _private_fits(self, p: RoutedPhase) -> bool:
        """Whether ``p`` at its uncontended rate fits each of its links (true of ``RouteMemo``'s phases)."""
        fits = self._fits.get(id(p))
        if fits is None:
            cap = self.cache.capacity[p.link_ids]
            fits = self._fits[id(p)] = bool(np.all(p.alone_rate * p.load <= cap * (1.0 + _FEASIBLE_RTOL)))
        return fits

    def _whole_link_rates(self, trs: list[_Transfer]) -> np.ndarray:
        links = [t.current.link_ids for t in trs]
        loads = [t.current.load for t in trs]
        at = np.concatenate(links)
        use = np.concatenate([t.current.alone_rate * k for t, k in zip(trs, loads, strict=True)])
        if self._fit_alone(at, use):
            return np.array([t.current.alone_rate for t in trs])
        return maxmin_rates(self.cache.capacity, list(zip(links, loads, strict=True)))

    def _fit_alone(self, at: np.ndarray, use: np.ndarray) -> bool:
        """Whether the phases at their uncontended rates, loading link ``at[i]`` by ``use[i]`` bytes/s,
        fit every link given.

        Then that allocation is the max-min fair one: each phase is held by its own bottleneck, which no
        other phase uses at capacity, so progressive filling would freeze every phase there. Phases that
        share a link without filling it (a small DP bucket beside a pipeline send) skip the filling."""
        # ``np.unique(at, return_inverse=True)`` by marking when the entries are many (a 16,384-GPU step's
        # data-parallel phases cross tens of thousands of links: sorting them was 5% of its CPU); the same
        # ids and inverse, so the same sums in the same order
        ids, inv = compact_ids(at, self.cache.capacity.size)
        total = np.bincount(inv, weights=use, minlength=ids.size)
        return not np.any(total > self.cache.capacity[ids] * (1.0 + _FEASIBLE_RTOL))

    def _schedule(self, tr: _Transfer) -> None:
        tr.version += 1
        version = tr.version
        dt = max(tr.remaining, 0.0) / tr.rate
        self._later(dt, lambda: self._on_timer(tr, version))

    def _on_timer(self, tr: _Transfer, version: int) -> None:
        if version != tr.version or tr.ident not in self._active:
            return  # rescheduled since, or already finished
        now = self.env.now
        tr.catch_up(now)
        resolution_s = max(_TIME_EPS_S, abs(now) * _CLOCK_ULPS)
        if tr.remaining > max(_REL_EPS * tr.current.max_flow_bytes, tr.rate * resolution_s):
            self._schedule(tr)  # float drift: a little is left
            return
        self._finish(tr)
