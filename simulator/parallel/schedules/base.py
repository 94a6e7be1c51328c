"""The pipeline-schedule extension point: the order of forward/backward tasks on each pipeline stage."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from simulator.errors import InfeasibleConfig
from simulator.registry import SCHEDULES


class Pass(StrEnum):
    """Kinds of pipeline tasks: forward, backward (input+weight gradients), or split B/W (zero bubble), and
    a whole backward BW where a splitting schedule does not split."""

    F = "F"
    B = "B"  # full backward, or input-gradient only when the schedule also emits W
    W = "W"  # weight-gradient backward (zero-bubble schedules)
    # a full backward (input and weight gradients together) in a schedule that otherwise splits them:
    # DualPipe(V) runs most backwards whole and splits only some (deepseek-ai/DualPipe, ``enable_zb``)
    BW = "BW"


@dataclass(frozen=True, slots=True)
class Task:
    """One pass of micro-batch ``mb`` through model chunk ``chunk`` of a stage."""

    kind: Pass
    mb: int
    chunk: int = 0
    # the forward of an overlapped F&B pair (DualPipe): the pair starts once the next task, its backward,
    # has its input gradient too, as the reference waits on both receives before running the pair
    paired: bool = False


class Schedule(ABC):
    """Orders the tasks of each stage; ``chunks`` > 1 only for interleaved schedules."""

    name: ClassVar[str]
    splits_backward: ClassVar[bool] = False  # whether it emits separate W tasks
    chunked: ClassVar[bool] = False  # whether a stage may hold more than one model chunk (virtual_stages > 1)
    # whether Megatron-Core's combined 1F1B (expert-parallel overlap) can merge its steady state: interleaved
    # schedules, and 1F1B without pipelining (Megatron-LM pipeline_parallel/schedules.py calls
    # combined_1f1b_schedule_for_no_pipelining or ..._for_interleaved_pipelining, nothing else)
    merges_steady_state: ClassVar[bool] = False

    def check(self, stages: int, micro_batches: int, chunks: int) -> None:
        """Every rule of this shape: a stage holds one model chunk unless the schedule is ``chunked``, then the
        schedule's own rules (``validate``)."""
        if chunks > 1 and not self.chunked:
            chunked = [n for n in SCHEDULES.names() if SCHEDULES.get(n).chunked]
            raise InfeasibleConfig(
                f"virtual_stages={chunks} needs a schedule that holds several chunks per stage: "
                f"{', '.join(chunked)} (got {self.name})",
                field="parallelism.virtual_stages",
            )
        self.validate(stages, micro_batches, chunks)

    def validate(self, stages: int, micro_batches: int, chunks: int) -> None:  # noqa: B027 - optional hook
        """Raise ``InfeasibleConfig`` if the schedule cannot run this shape (its own rules; ``check`` runs them)."""

    def virtual_stage(self, stage: int, chunk: int, stages: int) -> int:
        """Where model chunk ``chunk`` of pipeline stage ``stage`` sits in model order (its virtual stage).
        The schedule owns this placement; the default is Megatron-LM's interleaving, in which stage ``s``
        holds virtual stages ``s, s + P, s + 2P, …`` (Narayanan et al. 2021, Sec. 2.2)."""
        return chunk * stages + stage

    def stage_of(self, virtual_stage: int, stages: int) -> int:
        """The pipeline stage that holds ``virtual_stage`` (the inverse of ``virtual_stage``)."""
        return virtual_stage % stages

    @abstractmethod
    def tasks(self, stage: int, stages: int, micro_batches: int, chunks: int) -> list[Task]:
        """The tasks of ``stage`` in execution order."""

    @abstractmethod
    def in_flight(self, stage: int, stages: int, micro_batches: int, chunks: int) -> float:
        """Peak number of micro-batches (in units of a whole stage's layers) whose activations are held."""


def pair_steady_state(tasks: list[Task]) -> list[Task]:
    """A 1F1B order (warm-up forwards, alternating forwards and backwards, cool-down backwards) as Megatron-Core's
    combined 1F1B runs it (``--overlap-moe-expert-parallel-comm``; Megatron-Bridge ``moe_a2a_overlap``): one more
    warm-up forward (Megatron-LM adds 1 to the interleaved warm-up, and without pipelining runs F0, then F1 with
    B0, …), then each steady-state forward ``paired`` with the backward after it: the two run merged, each
    one's all-to-alls under the other's compute. The warm-up forwards and the cool-down backwards stay alone."""
    forwards = [t for t in tasks if t.kind is Pass.F]
    backwards = [t for t in tasks if t.kind is not Pass.F]
    # the forwards before the first backward: the warm-up and the first steady one, now all warm-up
    warm = next((i for i, t in enumerate(tasks) if t.kind is not Pass.F), len(tasks))
    out = forwards[:warm]
    steady = forwards[warm:]
    for f, b in zip(steady, backwards, strict=False):
        out += [Task(f.kind, f.mb, f.chunk, (f.mb, f.chunk) != (b.mb, b.chunk)), b]
    return out + backwards[len(steady):]
