"""The event queue the engine and the network models schedule on: a simpy environment for models that only
ever wait on timeouts, and a way to run a callback later on any simpy environment. It sits below both (the flow
model schedules its completions on it; the engine runs every op on it), so neither imports the other for it."""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

import simpy
from simpy.events import NORMAL


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

    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """``fn()`` ``delay`` seconds from now: a timeout with one callback, queued as the callback itself
        (no timer object, no callback list: the engine and the flow model schedule one per event)."""
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        heapq.heappush(self._queue, (self._now + delay, NORMAL, next(self._eid), fn))  # type: ignore[arg-type,misc]

    def call_at(self, when: float, fn: Callable[[], None]) -> None:
        """``fn()`` at absolute time ``when`` (``timer_at`` with one callback, as ``call_later``)."""
        if when < self._now:
            raise ValueError(f"time {when} is in the past (now {self._now})")
        heapq.heappush(self._queue, (when, NORMAL, next(self._eid), fn))  # type: ignore[arg-type,misc]

    def run(self, until: Any = None) -> None:
        """Run until no timer is left (``until`` is not supported)."""
        assert until is None, "HeapEnvironment runs to completion"
        queue, pop = self._queue, heapq.heappop
        while queue:
            self._now, _, _, item = pop(queue)
            if type(item) is _Timer:
                callbacks, item.callbacks = item.callbacks, None  # type: ignore[assignment]
                for callback in callbacks:  # type: ignore[union-attr]
                    callback(item)
            else:  # call_later / call_at
                item()  # type: ignore[operator]  # a queued callback, not an event


def call_later(env: simpy.Environment) -> Callable[[float, Callable[[], None]], None]:
    """``env``'s way to run a function some seconds from now: ``HeapEnvironment.call_later``, or on any other
    simpy environment a timeout with that callback (the same event order either way)."""
    if isinstance(env, HeapEnvironment):
        return env.call_later

    def later(delay: float, fn: Callable[[], None]) -> None:
        env.timeout(delay).callbacks.append(lambda _ev: fn())  # type: ignore[union-attr]

    return later
