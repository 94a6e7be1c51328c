"""The analytical (α-β) network model: each collective takes its uncontended time, Σ phases of
``steps·α + largest flow bytes / bottleneck rate`` (Thakur, Rabenseifner & Gropp 2005), computed on the
same routed phases as the flow model so that the two agree exactly when nothing contends."""

from __future__ import annotations

from collections.abc import Callable

from simulator.network.models.base import NETWORK_MODELS, CollectiveRequest, NetworkModel, alone_time


@NETWORK_MODELS.register("analytical")
class AnalyticalNetwork(NetworkModel):
    """No contention between collectives: fast, for sweeps."""

    name = "analytical"

    def run(self, req: CollectiveRequest, on_done: Callable[[], None]) -> None:
        """Finish after the collective's uncontended duration."""
        phases = self.cache.routed(req)
        self._account(phases)
        self.env.timeout(alone_time(phases)).callbacks.append(lambda _ev: on_done())
