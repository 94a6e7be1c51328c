"""Time, GPU-hours, money, energy and CO₂ of a training run, from one simulated step.

Steps = ⌈tokens / tokens per step⌉; the ideal time is steps × step time, and the expected wall time adds
the interruptions and checkpoints of ``simulator.planning.reliability`` (ideal / (1 − waste)). GPU-hours
count every GPU for the whole wall time. Energy counts every GPU at its TDP for the wall time, times the
data centre's PUE (docs/reference.md, cost and energy): an estimate that leaves out host CPUs, memory and the
network inside the IT load, and GPUs drawing less than TDP. CO₂ = energy × grid carbon intensity.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator.planning import SECONDS_PER_DAY, SECONDS_PER_HOUR
from simulator.planning.reliability import Reliability
from simulator.report.cost import steps_for_tokens
from simulator.report.schema import StepReport

PUE = 1.58  # industry average (Uptime Institute Global Data Center Survey 2023; docs/reference.md: 1.56-1.58)
GRID_G_CO2_PER_KWH = 475.0  # world average grid carbon intensity, as CodeCarbon uses (docs/reference.md)


@dataclass(frozen=True)
class TrainingCost:
    """What training on ``tokens`` tokens takes on the simulated cluster and layout."""

    tokens: float
    tokens_per_step: float
    step_time_s: float
    steps: int
    gpus: int
    ideal_s: float  # without interruptions
    wall_s: float  # expected, with interruptions, restarts and checkpoints
    usd_per_gpu_hour: float
    gpu_tdp_w: float
    reliability: Reliability

    @property
    def days(self) -> float:
        """Expected wall-clock days."""
        return self.wall_s / SECONDS_PER_DAY

    @property
    def ideal_days(self) -> float:
        """Days without interruptions."""
        return self.ideal_s / SECONDS_PER_DAY

    @property
    def gpu_hours(self) -> float:
        """GPU-hours over the expected wall time."""
        return self.gpus * self.wall_s / SECONDS_PER_HOUR

    @property
    def usd(self) -> float:
        """Cost at ``usd_per_gpu_hour``."""
        return self.gpu_hours * self.usd_per_gpu_hour

    @property
    def energy_kwh(self) -> float:
        """GPU TDP × GPU-hours × PUE, kWh."""
        return self.gpu_tdp_w * self.gpu_hours * PUE / 1000.0

    @property
    def co2_tonnes(self) -> float:
        """Energy × world-average grid intensity, tonnes of CO₂."""
        return self.energy_kwh * GRID_G_CO2_PER_KWH / 1e6

    @property
    def interruptions(self) -> float:
        """Expected unexpected interruptions over the wall time."""
        return self.wall_s / self.reliability.mtbf_s


def training_cost(
    tokens: float, report: StepReport, reliability: Reliability, *, gpu_tdp_w: float, usd_per_gpu_hour: float
) -> TrainingCost:
    """The run that trains ``tokens`` tokens with the step of ``report``."""
    tokens_per_step = report.tokens_per_s * report.step_time_s
    steps = steps_for_tokens(tokens, tokens_per_step)  # the step count the report's days use
    ideal = steps * report.step_time_s
    wall = ideal / (1.0 - reliability.waste_fraction)
    return TrainingCost(
        tokens, tokens_per_step, report.step_time_s, steps, report.gpus, ideal, wall, usd_per_gpu_hour,
        gpu_tdp_w, reliability,
    )  # fmt: skip


def tokens_for_gpu_hours(gpu_hours: float, report: StepReport, reliability: Reliability) -> float:
    """Tokens that ``gpu_hours`` of the report's GPUs train, interruptions and checkpoints included."""
    wall_s = gpu_hours / report.gpus * SECONDS_PER_HOUR
    return report.tokens_per_s * wall_s * (1.0 - reliability.waste_fraction)
