"""Fake simulate functions for the batch tests: module-level (picklable, importable by workers) and
deterministic (the report is a function of the scenario fields only)."""

from __future__ import annotations

import multiprocessing
import os
import time
from typing import Any

from simulator.errors import InfeasibleConfig
from simulator.planning.search import _attempt, _fast_batch
from simulator.report.schema import Breakdown, CommTimes, MemoryGiB, StepReport
from simulator.scenario import Scenario

GPUS_PER_NODE = 8


def fake_report(scenario: Scenario) -> StepReport:
    """A made-up but deterministic report of ``scenario``: it depends on tp, pp, nodes and the batch."""
    par, train = scenario.parallelism, scenario.training
    gpus = int(scenario.topology.get("nodes", 1)) * GPUS_PER_NODE
    compute_s = 1.0 + 64.0 / gpus
    comm_s = 0.01 * par.tp + 0.02 * par.pp
    bubble_s = 0.05 * (par.pp - 1)
    step_s = compute_s + comm_s + bubble_s
    return StepReport(
        scenario=scenario.name,
        gpus=gpus,
        step_time_s=step_s,
        tokens_per_s=train.global_batch * train.seq_len / step_s,
        samples_per_s=train.global_batch / step_s,
        model_tflops_per_gpu=100.0 * compute_s / step_s,
        mfu=0.32 * compute_s / step_s,
        hfu=0.4 * compute_s / step_s,
        breakdown=Breakdown(
            compute_s=compute_s, exposed_comm_s=comm_s, overlapped_comm_s=0.1, bubble_s=bubble_s, other_s=0.0
        ),
        comm=CommTimes(tp_s=0.01 * par.tp, pp_s=0.02 * par.pp, dp_s=0.1),
        memory_gib_per_gpu=MemoryGiB(
            weights=10.0 / par.tp, grads=5.0, optimizer=20.0, activations=8.0, other=1.0, total=44.0
        ),
        fits_memory=par.tp >= 2,
        simulated_ranks=par.pp,
        events=100 * par.pp,
        wall_s=0.001,
    )


def fake_simulate(scenario: Scenario) -> StepReport:
    """``fake_report`` after 20 to 25 ms of sleep (a stand-in for the engine's work, which takes 0.1 to a few
    seconds per point; long enough that the store's speed-up is measurable on a loaded 2-core machine)."""
    time.sleep(0.020 + int(scenario.content_hash()[:4], 16) % 6 / 1000)
    return fake_report(scenario)


def fake_simulate_fast(scenario: Scenario) -> StepReport:
    """``fake_report`` with no delay."""
    return fake_report(scenario)


def fake_simulate_slow(scenario: Scenario) -> StepReport:
    """``fake_report`` after 40 ms (for the kill test: slow enough to be stopped half-way)."""
    time.sleep(0.04)
    return fake_report(scenario)


def fake_simulate_infeasible(scenario: Scenario) -> StepReport:
    """Raises ``InfeasibleConfig`` when tp × pp exceeds 8 GPUs, otherwise ``fake_report``."""
    par = scenario.parallelism
    if par.tp * par.pp > 8:
        raise InfeasibleConfig(f"tp={par.tp} x pp={par.pp} exceeds the 8-GPU node")
    return fake_report(scenario)


def fake_simulate_buggy(scenario: Scenario) -> StepReport:
    """Raises ``ZeroDivisionError`` (a bug, not a user error) when tp = 4."""
    if scenario.parallelism.tp == 4:
        return fake_report(scenario).model_copy(update={"step_time_s": 1 / 0})
    return fake_report(scenario)


def fake_simulate_interrupt(scenario: Scenario) -> StepReport:
    """Raises ``KeyboardInterrupt`` on the point tp = 8, nodes = 32 (a user pressing Ctrl-C)."""
    if scenario.parallelism.tp == 8 and scenario.topology.get("nodes") == 32:
        raise KeyboardInterrupt
    return fake_simulate(scenario)


def fake_simulate_crash(scenario: Scenario) -> StepReport:
    """Kills its worker process (as the kernel does when out of memory) on the point tp = 8, nodes = 32."""
    if scenario.parallelism.tp == 8 and scenario.topology.get("nodes") == 32:
        os._exit(9)
    return fake_simulate(scenario)


def fake_simulate_logged(scenario: Scenario) -> StepReport:
    """``fake_simulate_slow``, appending ``<pid> <content hash>`` to the file ``$CLUSTERSIM_FAKE_LOG`` first
    (the tests of two batches on one store count how often each point was computed, and by whom)."""
    with open(os.environ["CLUSTERSIM_FAKE_LOG"], "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()} {scenario.content_hash()}\n")
    return fake_simulate_slow(scenario)


def _die_in_a_worker() -> None:
    """Kill this process if it is a pool worker, as the kernel does when a loaded machine runs out of memory
    (issue #10, point 3: ``WorkersLost`` out of ``clustersim search``)."""
    if multiprocessing.parent_process() is not None:
        os._exit(9)


def attempt_or_die(scenario: Scenario) -> StepReport | str:
    """The search's ``_attempt`` in the main process; a pool worker dies instead."""
    _die_in_a_worker()
    return _attempt(scenario)


def fast_batch_or_die(job: Any) -> Any:
    """The search's ``_fast_batch`` in the main process; a pool worker dies instead."""
    _die_in_a_worker()
    return _fast_batch(job)
