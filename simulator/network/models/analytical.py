"""The analytical (α-β) network model: each collective takes its uncontended time, Σ phases of
``steps·α + largest flow bytes / bottleneck rate`` (Thakur, Rabenseifner & Gropp 2005), computed on the
same routed phases as the flow model so that the two agree exactly when nothing contends.

"Uncontended" means: no other *kind* of traffic. The concurrent instances of the same collective (the 128
data-parallel rings of a stage, two of which may share a NIC) are always part of its time — they run in
lockstep by construction — whether the engine simulates one representative for them or every rank
(``CollectiveRequest.siblings``). Without that, ``--full`` would time each ring alone and report links
above 100% utilisation."""

from __future__ import annotations

from collections.abc import Callable

from simulator.network.models.base import CollectiveRequest, NetworkModel, alone_time
from simulator.registry import NETWORK_MODELS


@NETWORK_MODELS.register("analytical")
class AnalyticalNetwork(NetworkModel):
    """No contention between collectives: fast, for sweeps."""

    name = "analytical"

    def run(self, req: CollectiveRequest, on_done: Callable[[], None]) -> None:
        """Finish after the collective's uncontended duration."""
        self._account(self.cache.routed(req))
        duration = alone_time(self.cache.routed(req.timing_request()))
        self.env.timeout(duration).callbacks.append(lambda _ev: on_done())
