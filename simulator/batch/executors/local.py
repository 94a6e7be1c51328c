"""The ``local`` executor: a pool of worker processes on this machine."""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from simulator.batch.executors.base import EXECUTORS, A, Done, Executor, R, WorkersLost


def _ignore_sigint() -> None:
    """Worker initializer: Ctrl-C interrupts the main process only, which then stops the pool."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """``options.workers`` processes (``concurrent.futures.ProcessPoolExecutor``), started with
    ``options.start_method`` (spawn by default: safe with threads, needs picklable, importable functions)."""

    name = "local"

    def run(self, fn: Callable[[A], R], items: Sequence[A]) -> Generator[Done[R], None, None]:
        """Run ``fn(item)`` for every item in the pool; yield outcomes as they complete."""
        if not items:
            return
        context = multiprocessing.get_context(self.options.start_method)
        workers = max(1, min(self.options.workers, len(items)))
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_ignore_sigint)
        try:
            futures: dict[Future[R], int] = {pool.submit(fn, item): i for i, item in enumerate(items)}
            for fut in as_completed(futures):
                error = fut.exception()
                if isinstance(error, BrokenProcessPool):
                    raise WorkersLost(f"a worker process died abruptly (out of memory? a crash?): {error}")
                yield Done(futures[fut], None if error else fut.result(), error)
        finally:
            # An interrupt (or the caller closing us early) cancels what has not started; the
            # points in flight finish in the workers and are not stored.
            pool.shutdown(wait=True, cancel_futures=True)
