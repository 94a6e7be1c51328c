"""The ``dask`` executor: an existing Dask distributed cluster, reached through its scheduler address.

``dask[distributed]`` is optional (``pip install clustersim[dask]``); it is imported only when this
executor runs. The workers must be able to import ``simulator`` and the simulate function.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from typing import Any

from simulator.batch.executors.base import A, Done, Executor, R
from simulator.errors import UserInputError
from simulator.registry import EXECUTORS


@EXECUTORS.register("dask")
class DaskExecutor(Executor):
    """Submits every point to ``distributed.Client(options.scheduler)``; results come back as they finish."""

    name = "dask"

    def run(self, fn: Callable[[A], R], items: Sequence[A]) -> Generator[Done[R], None, None]:
        """Run ``fn(item)`` for every item on the cluster; yield outcomes as they complete."""
        if not items:
            return
        client = self._connect()  # first: without dask installed it is a one-line error, not ImportError
        from distributed import as_completed

        futures: list[Any] = []
        try:
            futures = client.map(fn, list(items), pure=False)
            index = {fut.key: i for i, fut in enumerate(futures)}
            for fut in as_completed(futures, loop=client.loop):
                i = index[fut.key]
                if fut.status == "finished":
                    yield Done(i, fut.result())
                else:
                    yield Done(i, None, fut.exception())
                fut.release()
        finally:
            client.cancel([f for f in futures if not f.done()])
            client.close()

    def _connect(self) -> Any:
        """A client of the scheduler; an unreachable address or a missing install is a user error."""
        address = self.options.scheduler
        if not address:
            raise UserInputError(
                "the dask executor needs a scheduler address (tcp://HOST:PORT)", field="scheduler"
            )
        try:
            from distributed import Client
        except ImportError:
            raise UserInputError(
                "the dask executor needs dask[distributed]: pip install 'clustersim[dask]'",
                field="--scheduler",
            ) from None
        try:
            return Client(address, set_as_default=False, timeout=self.options.connect_timeout_s)
        except (OSError, TimeoutError) as e:
            raise UserInputError(
                f"cannot reach the Dask scheduler at {address}: {e}", field="scheduler"
            ) from None
