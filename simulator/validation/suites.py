"""Validation suites: simulate the shipped scenarios of published runs and compare with the measurements.

``suites.yaml`` lists each suite's data file (``data/``), its scenario files (shipped ``scenarios/``), how
the measured step time is obtained, the tolerance, and whether the suite was used to fit the GPU type's
calibration (``fit``) or is an independent check (``held-out``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from simulator.errors import ScenarioError
from simulator.hardware.calibration import ComputeCalibration
from simulator.models.flops import megatron_flops_per_iteration, model_flops_per_token
from simulator.scenario import Scenario, load_scenario
from simulator.simulate import simulate
from simulator.topology.loader import shipped_dir


@dataclass(frozen=True)
class Row:
    """One published run to reproduce."""

    suite: str
    name: str
    scenario_file: str
    measured_s: float
    tolerance: float
    role: str
    gpu: str


@dataclass(frozen=True)
class Result:
    """A row with its prediction."""

    row: Row
    predicted_s: float
    gpus: int
    mfu: float

    @property
    def error(self) -> float:
        """Relative error of the predicted step time."""
        return self.predicted_s / self.row.measured_s - 1.0

    @property
    def ok(self) -> bool:
        """Within the suite's tolerance."""
        return abs(self.error) <= self.row.tolerance


@cache
def suite_specs() -> dict[str, dict[str, Any]]:
    """The suites of ``suites.yaml``, by name."""
    text = resources.files("simulator.validation").joinpath("suites.yaml").read_text()
    doc: dict[str, dict[str, Any]] = yaml.safe_load(text)
    return doc


def _data(name: str) -> dict[str, Any]:
    text = resources.files("simulator.validation").joinpath(f"data/{name}").read_text()
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


def scenario_path(rel: str) -> Path:
    """A shipped scenario file."""
    folder = shipped_dir("scenarios")
    if folder is None or not (folder / rel).is_file():
        raise ScenarioError(f"shipped scenario {rel!r} not found; reinstall clustersim", field="validation")
    return folder / rel


def _measured(kind: str, run: dict[str, Any], scenario: Scenario) -> float:
    """The measured step time of ``run``, seconds."""
    if kind == "step_time_s":
        return float(run["step_time_s"])
    t = scenario.training
    gpus = int(run["gpus"])
    if kind == "megatron_tflops":
        flops = megatron_flops_per_iteration(scenario.model, t.global_batch, t.seq_len)
    elif kind == "model_tflops":
        flops = model_flops_per_token(scenario.model, t.seq_len) * t.global_batch * t.seq_len
    else:
        raise ValueError(kind)
    return flops / (float(run["tflops_per_gpu"]) * 1e12 * gpus)


def suite_rows(names: list[str] | None = None) -> Iterator[tuple[Row, Scenario]]:
    """Every row of the named suites (all when ``names`` is empty), with its scenario loaded."""
    specs = suite_specs()
    for name in names or list(specs):
        if name not in specs:
            raise ScenarioError(f"unknown suite {name!r}; valid: {', '.join(specs)}", field="--suite")
        spec = specs[name]
        runs = _data(spec["data"])["runs"]
        fit_rows = set(spec.get("fit_rows", range(len(spec["rows"]))))
        for i, entry in enumerate(spec["rows"]):
            run = runs[entry["run"]]
            scenario = load_scenario(scenario_path(entry["scenario"]))
            measured = _measured(spec["measured"], run, scenario)
            label = str(run.get("name") or run.get("params_b") or entry["run"])
            role = spec["role"] if i in fit_rows else "held-out"
            row = Row(name, label, entry["scenario"], measured, float(spec["tolerance"]), role, spec["gpu"])
            yield row, scenario


def evaluate(row: Row, scenario: Scenario, calibration: ComputeCalibration | None = None) -> Result:
    """Simulate one row."""
    report = simulate(scenario, calibration=calibration).report
    return Result(row, report.step_time_s, report.gpus, report.mfu)


def _evaluate_packed(args: tuple[Row, Scenario, ComputeCalibration | None]) -> Result:
    return evaluate(*args)


def run_rows(
    rows: list[tuple[Row, Scenario]],
    calibration: ComputeCalibration | None = None,
    workers: int = 1,
    on_result: Callable[[Result], None] | None = None,
) -> list[Result]:
    """Evaluate rows (in ``workers`` processes), in order."""
    jobs = [(r, s, calibration) for r, s in rows]
    if workers <= 1:
        results = []
        for job in jobs:
            results.append(_evaluate_packed(job))
            if on_result:
                on_result(results[-1])
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_evaluate_packed, jobs))
    if on_result:
        for r in results:
            on_result(r)
    return results
