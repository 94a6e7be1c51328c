"""The executor extension point: one subclass per module of this package, registered by name.

An executor runs one picklable function over many inputs and yields each outcome as soon as it is
done, so that the caller (the batch runner, in the main process) stores every result immediately.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import ClassVar, Generic, TypeVar

from simulator.registry import EXECUTORS

A = TypeVar("A")
R = TypeVar("R")


@dataclass(frozen=True)
class ExecutorOptions:
    """Settings every executor receives; each reads the ones it needs."""

    workers: int = 1  # local: worker processes
    scheduler: str | None = None  # dask: scheduler address, e.g. tcp://10.0.0.5:8786
    start_method: str = "spawn"  # local: multiprocessing start method
    connect_timeout_s: float = 30.0  # dask: how long to wait for the scheduler


@dataclass(frozen=True)
class Done(Generic[R]):
    """One finished task: the input's position, and its value or the exception it raised."""

    index: int
    value: R | None
    error: BaseException | None = None


class WorkersLost(RuntimeError):
    """The executor lost its workers (killed for memory, a crash in native code): the batch stops, the
    results stored so far are kept, and a re-run resumes."""


class Executor(ABC):
    """Runs a function over inputs in parallel and yields each ``Done`` as it completes.

    ``fn`` must be picklable (a module-level function, or a ``functools.partial`` of one), because it
    runs in other processes or on other machines. Closing the iterator early (an interrupt) cancels the
    tasks not yet started.
    """

    name: ClassVar[str]

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = options

    @abstractmethod
    def run(self, fn: Callable[[A], R], items: Sequence[A]) -> Generator[Done[R], None, None]:
        """Run ``fn(item)`` for every item; yield the outcomes in completion order."""




def make_executor(name: str, options: ExecutorOptions) -> Executor:
    """The executor registered as ``name``, configured with ``options``."""
    return EXECUTORS.get(name, field="executor")(options)
