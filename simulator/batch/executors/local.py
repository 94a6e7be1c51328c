"""The ``local`` executor: a pool of worker processes on this machine."""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

from simulator.batch.executors.base import A, Done, Executor, R, WorkersLost
from simulator.registry import EXECUTORS

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_POLL_S = 1.0  # how often a worker checks that its parent is still there (where prctl is missing)


def _die_with(parent: int) -> None:
    """Make this worker exit when the batch process ``parent`` dies, even by SIGKILL (issue #12: the pool
    workers outlived their parent). On Linux the kernel sends SIGKILL (prctl PR_SET_PDEATHSIG); a daemon
    thread polling ``os.getppid()`` covers every platform and the instant before prctl took effect."""
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still holds
    if os.getppid() != parent:  # the parent died before prctl: nobody will collect our results
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_S)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="clustersim-parent-watch", daemon=True).start()


def _init_worker(parent: int) -> None:
    """Worker initializer: Ctrl-C interrupts the main process only, which then stops the pool; and the
    worker dies with that process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with(parent)


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
        pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(),)
        )
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
