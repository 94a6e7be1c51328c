"""The pipeline-schedule extension point: the order of forward/backward tasks on each pipeline stage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from simulator.registry import Registry


class Pass(StrEnum):
    """Kinds of pipeline tasks: forward, backward (input+weight gradients), or split B/W (zero bubble)."""

    F = "F"
    B = "B"  # full backward, or input-gradient only when the schedule also emits W
    W = "W"  # weight-gradient backward (zero-bubble schedules)


@dataclass(frozen=True, slots=True)
class Task:
    """One pass of micro-batch ``mb`` through model chunk ``chunk`` of a stage."""

    kind: Pass
    mb: int
    chunk: int = 0


class Schedule(ABC):
    """Orders the tasks of each stage; ``chunks`` > 1 only for interleaved schedules."""

    name: ClassVar[str]
    splits_backward: ClassVar[bool] = False  # whether it emits separate W tasks

    def validate(self, stages: int, micro_batches: int, chunks: int) -> None:  # noqa: B027 - optional hook
        """Raise ``InfeasibleConfig`` if the schedule cannot run this shape."""

    @abstractmethod
    def tasks(self, stage: int, stages: int, micro_batches: int, chunks: int) -> list[Task]:
        """The tasks of ``stage`` in execution order."""

    @abstractmethod
    def in_flight(self, stage: int, stages: int, micro_batches: int, chunks: int) -> float:
        """Peak number of micro-batches (in units of a whole stage's layers) whose activations are held."""


SCHEDULES: Registry[type[Schedule]] = Registry("pipeline schedule", "simulator.parallel.schedules")
