"""What the simulated step costs in money and days: the report's ``usd_per_million_tokens``, ``days`` and
``usd`` (issue #10, point 1), from the scenario's ``cost`` section.

* $ per million tokens = price × GPUs / 3600 / tokens per second × 10⁶ (every GPU is paid for every second);
* with ``cost.train_tokens`` D: steps = ⌈D / tokens per step⌉ (a run trains whole steps), days = steps ×
  step time / 86,400, $ = GPUs × steps × step time / 3600 × price.

The days and dollars are those of an uninterrupted run: no failures, restarts or checkpoint writes.
``clustersim plan --tokens D`` adds those (``simulator/planning/cost.py``, which uses the same step count).
Kept in the report room so that ``simulate`` (which writes the report) and ``planning`` share one formula.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SECONDS_PER_HOUR = 3600.0
SECONDS_PER_DAY = 86_400.0
TOKENS_PER_MILLION = 1e6


def usd_per_million_tokens(gpus: int, tokens_per_s: float, usd_per_gpu_hour: float) -> float:
    """What one million trained tokens cost on ``gpus`` GPUs training ``tokens_per_s`` at the price."""
    return usd_per_gpu_hour * gpus / SECONDS_PER_HOUR / tokens_per_s * TOKENS_PER_MILLION


def steps_for_tokens(tokens: float, tokens_per_step: float) -> int:
    """Optimizer steps that train ``tokens`` tokens (whole steps: the last one is paid in full)."""
    return math.ceil(tokens / tokens_per_step)


@dataclass(frozen=True)
class RunCost:
    """The cost fields of one report; ``days`` and ``usd`` are None without ``train_tokens``."""

    usd_per_gpu_hour: float
    usd_per_million_tokens: float
    train_tokens: float | None
    days: float | None
    usd: float | None


def run_cost(
    *,
    gpus: int,
    tokens_per_step: float,
    step_time_s: float,
    usd_per_gpu_hour: float,
    train_tokens: float | None,
) -> RunCost:
    """The report's cost fields for a step of ``step_time_s`` training ``tokens_per_step`` on ``gpus`` GPUs."""
    per_million = usd_per_million_tokens(gpus, tokens_per_step / step_time_s, usd_per_gpu_hour)
    if train_tokens is None:
        return RunCost(usd_per_gpu_hour, per_million, None, None, None)
    wall_s = steps_for_tokens(train_tokens, tokens_per_step) * step_time_s
    usd = gpus * wall_s / SECONDS_PER_HOUR * usd_per_gpu_hour
    return RunCost(usd_per_gpu_hour, per_million, train_tokens, wall_s / SECONDS_PER_DAY, usd)
