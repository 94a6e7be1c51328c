"""Validation suites: simulate the shipped scenarios of published runs and compare with the measurements.

``suites.yaml`` lists each suite's data file (``data/``), its scenario files (shipped ``scenarios/``), how
the measured step time is obtained, the tolerance, and whether the suite was used to fit the GPU type's
calibration (``fit``) or is an independent check (``held-out``).

Every row also belongs to classes (``row_classes``): one kind (dense bf16, dense fp8, long context, MoE) and its
GPU type and framework, so that ``clustersim validate`` can summarise and filter by class. A published run fits
in memory by definition, so a row whose predicted peak memory exceeds the GPU's is a failure of the memory model;
a row whose scenario the simulator rejects (a layout it cannot build yet) is reported as not running, with the
reason, never dropped.
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

from simulator.errors import ScenarioError, UserInputError
from simulator.hardware.calibration import ComputeCalibration
from simulator.hardware.gpu import gpu_catalog
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
    classes: tuple[str, ...] = ()  # row_classes(): kind, gpu:<type>, framework:<name>
    gpus: int = 0  # GPUs of the published run (shown when the scenario does not run)


# Row kinds, in the order validate prints them. Long context: 32k tokens and more (issue #8).
KINDS = ("dense-bf16", "dense-fp8", "long-context", "moe")
LONG_CONTEXT_TOKENS = 32768


def row_classes(scenario: Scenario, gpu: str) -> tuple[str, ...]:
    """The kind of a run (MoE first, then long context, then dense by precision), its GPU type and framework."""
    t = scenario.training
    if scenario.model.moe is not None:
        kind = "moe"
    elif t.seq_len >= LONG_CONTEXT_TOKENS:
        kind = "long-context"
    else:
        kind = "dense-fp8" if t.precision == "fp8" else "dense-bf16"  # fp16/fp32 rows count as 16-bit dense
    return (kind, f"gpu:{gpu}", f"framework:{scenario.config.framework.name}")


def scenario_gpu(scenario: Scenario) -> str:
    """The GPU type of a scenario's cluster (the first host group's, for a mixed cluster)."""
    topo = scenario.topology
    host = topo.get("host") or (topo.get("host_groups") or [{}])[0].get("host") or {}
    return str(host.get("gpu", "?"))


@dataclass(frozen=True)
class Result:
    """A row with its prediction (``failure`` says why there is none: the simulator rejected the scenario)."""

    row: Row
    predicted_s: float
    gpus: int
    mfu: float
    memory_gib: float = 0.0  # predicted peak per GPU of the most loaded rank
    capacity_gib: float = 0.0  # the GPU's HBM
    failure: str = ""

    @property
    def runs(self) -> bool:
        """The simulator produced a prediction."""
        return not self.failure

    @property
    def error(self) -> float:
        """Relative error of the predicted step time (NaN when the row does not run)."""
        return self.predicted_s / self.row.measured_s - 1.0 if self.runs else float("nan")

    @property
    def fits(self) -> bool:
        """The predicted peak memory fits the GPU, as the published run did."""
        return self.runs and self.memory_gib <= self.capacity_gib

    @property
    def within(self) -> bool:
        """Step time within the suite's tolerance."""
        return self.runs and abs(self.error) <= self.row.tolerance

    @property
    def ok(self) -> bool:
        """Runs, within tolerance, and fits in memory."""
        return self.within and self.fits


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
    if kind == "step_time_s":  # modern-training-runs.yaml keeps it under `measured:`
        return float(run["step_time_s"] if "step_time_s" in run else run["measured"]["step_time_s"])
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
        data = _data(spec["data"])
        runs = data.get("runs") or data["cases"]  # modern-training-runs.yaml names its rows `cases`
        fit_rows = set(spec.get("fit_rows", range(len(spec["rows"]))))
        for i, entry in enumerate(spec["rows"]):
            run = runs[entry["run"]]
            scenario = load_scenario(scenario_path(entry["scenario"]))
            measured = _measured(spec["measured"], run, scenario)
            label = str(run.get("name") or run.get("id") or run.get("params_b") or entry["run"])
            role = spec["role"] if i in fit_rows else "held-out"
            gpu = spec.get("gpu") or scenario_gpu(scenario)  # a suite of several GPU types names none
            row = Row(name, label, entry["scenario"], measured, float(spec["tolerance"]), role, gpu,
                      row_classes(scenario, gpu), int(run.get("gpus", 0)))  # fmt: skip
            yield row, scenario


def select_rows(rows: list[tuple[Row, Scenario]], classes: list[str]) -> list[tuple[Row, Scenario]]:
    """The rows in any of ``classes`` (all rows when empty); an unknown class is a user error."""
    if not classes:
        return rows
    known = sorted({c for r, _ in rows for c in r.classes} | set(KINDS))
    for c in classes:
        if c not in known:
            raise ScenarioError(f"unknown class {c!r}; valid: {', '.join(known)}", field="--class")
    return [(r, s) for r, s in rows if set(classes) & set(r.classes)]


def evaluate(
    row: Row, scenario: Scenario, calibration: ComputeCalibration | None = None, host_launch_s: float | None = None
) -> Result:
    """Simulate one row; a scenario the simulator rejects is a row that does not run, with the reason."""
    try:
        report = simulate(scenario, calibration=calibration, host_launch_s=host_launch_s).report
    except UserInputError as e:  # ScenarioError or InfeasibleConfig: a layout the simulator cannot build (yet)
        return Result(row, float("nan"), row.gpus, float("nan"), failure=str(e))
    gpu = gpu_catalog().get(row.gpu)
    capacity = gpu.hbm_bytes / 2**30 if gpu is not None else float("inf")
    return Result(row, report.step_time_s, report.gpus, report.mfu, report.memory_gib_per_gpu.total, capacity)


def _evaluate_packed(args: tuple[Row, Scenario, ComputeCalibration | None, float | None]) -> Result:
    return evaluate(*args)


def run_rows(
    rows: list[tuple[Row, Scenario]],
    calibration: ComputeCalibration | None = None,
    workers: int = 1,
    on_result: Callable[[Result], None] | None = None,
    host_launch_s: float | None = None,
) -> list[Result]:
    """Evaluate rows (in ``workers`` processes), in order (``calibration`` and ``host_launch_s``: see
    ``simulate``)."""
    jobs = [(r, s, calibration, host_launch_s) for r, s in rows]
    if workers <= 1:
        results = []
        for job in jobs:
            results.append(_evaluate_packed(job))
            if on_result:
                on_result(results[-1])
        return results
    results = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        # in order, each as soon as it and those before it are done (so that progress can be shown)
        for result in pool.map(_evaluate_packed, jobs):
            results.append(result)
            if on_result:
                on_result(result)
    return results
