"""Batch runs: sweep validation, the results store, local and Dask executors, resuming after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from batch_fakes import (
    fake_simulate,
    fake_simulate_buggy,
    fake_simulate_crash,
    fake_simulate_fast,
    fake_simulate_infeasible,
    fake_simulate_interrupt,
)

from simulator.batch.executors.base import ExecutorOptions, WorkersLost, make_executor
from simulator.batch.runner import run_batch
from simulator.batch.store import STORE_FILE, ResultStore
from simulator.batch.sweep import load_points, load_sweep
from simulator.errors import ScenarioError, UserInputError
from simulator.registry import EXECUTORS

REPO = Path(__file__).resolve().parents[1]
BASE_SCENARIO: dict[str, Any] = {
    "model": "gpt3-175b",
    "cluster": {"topology": {"kind": "nvswitch", "gpus_per_node": 8, "nodes": 16}},
    "training": {"seq_len": 2048, "global_batch": 512},
    "parallelism": {"tp": 8, "pp": 4},
}
GRID_200 = {
    "parallelism.tp": [1, 2, 4, 8],
    "parallelism.pp": [1, 2, 4, 8, 16],
    "cluster.nodes": [8, 16, 24, 32, 40, 48, 56, 64, 72, 80],
}


def write_yaml(path: Path, doc: Any) -> Path:
    """Write ``doc`` as YAML (creating folders) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def make_sweep(tmp_path: Path, axes: dict[str, Any], **extra: Any) -> Path:
    """A base scenario in ``tmp_path/scenarios`` and a sweep over ``axes`` in ``tmp_path/sweeps``."""
    write_yaml(tmp_path / "scenarios" / "base.yaml", BASE_SCENARIO)
    return write_yaml(
        tmp_path / "sweeps" / "sweep.yaml", {"base": "../scenarios/base.yaml", "axes": axes, **extra}
    )


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a results CSV."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def store_rows(out_dir: Path) -> list[tuple[str, str]]:
    """(key, status) of every row of the store."""
    with sqlite3.connect(out_dir / STORE_FILE) as conn:
        return list(conn.execute("SELECT key, status FROM results"))


# ------------------------------------------------------------------------------------------- sweeps
def test_grid_of_200_points_then_rerun_from_the_store_computes_nothing(tmp_path: Path) -> None:
    """The re-run takes every point from the store (no wall-clock comparison: issue #10, point 1;
    benchmarks/ times it)."""
    sweep = make_sweep(tmp_path, GRID_200)
    out = tmp_path / "out"
    first = run_batch(sweep, out, workers=2, progress=False, simulate_fn=fake_simulate)
    assert (first.total, first.ran, first.cached, first.ok) == (200, 200, 0, 200)
    second = run_batch(sweep, out, workers=2, progress=False, simulate_fn=fake_simulate)
    assert (second.total, second.ran, second.cached, second.ok) == (200, 0, 200, 200)
    rows = read_csv(out / "results.csv")
    assert len(rows) == 200 and len({r["label"] for r in rows}) == 200
    assert len(list((out / "reports").glob("*.json"))) == 200
    row = next(r for r in rows if r["label"] == "sweep_tp=2_pp=4_nodes=16")
    assert (row["parallelism.tp"], row["parallelism.pp"], row["cluster.nodes"], row["gpus"]) == (
        "2",
        "4",
        "16",
        "128",
    )
    report = json.loads((out / "reports" / "sweep_tp=2_pp=4_nodes=16.json").read_text())
    assert float(row["step_time_s"]) == report["step_time_s"] and row["fits_memory"] == "true"
    assert len(store_rows(out)) == 200


def test_infeasible_points_are_recorded_with_their_reason_and_the_batch_goes_on(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, {"parallelism.tp": [1, 2, 4, 8], "parallelism.pp": [1, 2, 4]})
    result = run_batch(
        sweep, tmp_path / "out", workers=2, progress=False, simulate_fn=fake_simulate_infeasible
    )
    assert (result.total, result.ok, result.infeasible, result.failed) == (12, 9, 3, 0)
    rows = {r["label"]: r for r in read_csv(tmp_path / "out" / "results.csv")}
    bad = rows["sweep_tp=8_pp=2"]
    assert bad["status"] == "infeasible" and bad["reason"] == "tp=8 x pp=2 exceeds the 8-GPU node"
    assert bad["step_time_s"] == "" and not (tmp_path / "out" / "reports" / "sweep_tp=8_pp=2.json").exists()
    again = run_batch(
        sweep, tmp_path / "out", workers=2, progress=False, simulate_fn=fake_simulate_infeasible
    )
    assert (again.ran, again.cached, again.infeasible) == (0, 12, 3)


def test_errors_are_recorded_and_retried_by_the_next_run(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, {"parallelism.tp": [1, 2, 4]})
    out = tmp_path / "out"
    first = run_batch(sweep, out, workers=1, progress=False, simulate_fn=fake_simulate_buggy)
    assert (first.ok, first.failed) == (2, 1)
    row = next(r for r in read_csv(out / "results.csv") if r["status"] == "error")
    assert row["parallelism.tp"] == "4" and row["reason"] == "ZeroDivisionError: division by zero"
    fixed = run_batch(sweep, out, workers=1, progress=False, simulate_fn=fake_simulate_fast)
    assert (fixed.ran, fixed.cached, fixed.ok, fixed.failed) == (1, 2, 3, 0)
    forced = run_batch(sweep, out, workers=1, progress=False, force=True, simulate_fn=fake_simulate_fast)
    assert (forced.ran, forced.cached) == (3, 0) and len(store_rows(out)) == 3


def test_zip_mode_with_topology_paths_relative_to_the_sweep_file(tmp_path: Path) -> None:
    write_yaml(tmp_path / "topologies" / "small.yaml", {"kind": "nvswitch", "gpus_per_node": 8, "nodes": 4})
    write_yaml(tmp_path / "topologies" / "large.yaml", {"kind": "nvswitch", "gpus_per_node": 8, "nodes": 64})
    axes = {
        "cluster.topology": ["../topologies/small.yaml", "../topologies/large.yaml"],
        "parallelism.tp": [2, 8],
    }
    sweep = make_sweep(tmp_path, axes, mode="zip", name="sizes")
    points = load_points(sweep)
    assert [p.label for p in points] == ["sizes_topology=small_tp=2", "sizes_topology=large_tp=8"]
    assert [p.scenario.topology["nodes"] for p in points] == [4, 64]
    assert points[0].swept == {"cluster.topology": "../topologies/small.yaml", "parallelism.tp": 2}
    result = run_batch(sweep, tmp_path / "out", workers=1, progress=False, simulate_fn=fake_simulate_fast)
    assert [r["gpus"] for r in read_csv(result.csv_path)] == ["32", "512"]


def test_filter_skips_points_and_a_folder_is_a_batch(tmp_path: Path) -> None:
    sweep = make_sweep(
        tmp_path, {"parallelism.tp": [1, 2, 4, 8], "parallelism.pp": [1, 2, 4]}, filter="tp * pp <= 8"
    )
    assert len(load_points(sweep)) == 9
    both = ["cluster.gpus_per_node >= tp * pp", "parallelism.pp < 4"]  # a topology key and an axis key
    sweep = make_sweep(tmp_path, {"parallelism.tp": [1, 2, 4, 8], "parallelism.pp": [1, 2, 4]}, filter=both)
    assert [(p.swept["parallelism.tp"], p.swept["parallelism.pp"]) for p in load_points(sweep)] == [
        (1, 1), (1, 2), (2, 1), (2, 2), (4, 1), (4, 2), (8, 1)]  # fmt: skip
    broken = make_sweep(tmp_path, {"parallelism.tp": [1, 2]}, filter="tp < parallelism.dp")  # dp is None
    with pytest.raises(ScenarioError, match="TypeError"):
        load_points(broken)
    write_yaml(tmp_path / "folder" / "a.yaml", BASE_SCENARIO)
    write_yaml(tmp_path / "folder" / "b.yaml", {**BASE_SCENARIO, "parallelism": {"tp": 2}})
    result = run_batch(
        tmp_path / "folder", tmp_path / "out", workers=1, progress=False, simulate_fn=fake_simulate_fast
    )
    assert (result.total, result.ok) == (2, 2)
    assert [r["label"] for r in read_csv(result.csv_path)] == ["a", "b"]


BAD_SWEEPS = [
    ({"axes": {"parallelism.tpp": [1, 2]}}, "parallelism.tpp", "did you mean 'tp'"),
    ({"axes": {"training.seq_len.x": [1]}}, "training.seq_len.x", "single value"),
    ({"axes": {"parallelism.tp": []}}, "parallelism.tp", "empty axis"),
    ({"axes": {"parallelism.tp": 4}}, "parallelism.tp", "must be a list"),
    ({"axes": {"parallelism.tp": [1, "two"]}}, "parallelism.tp", "'two'"),
    ({"axes": {"training.precision": ["bf16", "int3"]}}, "training.precision", "'int3'"),
    ({"axes": {"cluster.topology": ["missing.yaml"]}}, "cluster.topology", "not found"),
    (
        {"mode": "zip", "axes": {"parallelism.tp": [1, 2], "parallelism.pp": [1]}},
        "parallelism.tp",
        "equal lengths",
    ),
    ({"axes": {"parallelism.tp": [1]}, "filter": "tp > nodes"}, "filter[0]", "unknown name 'nodes'"),
    ({"axes": {"parallelism.tp": [1]}, "filter": "__import__('os')"}, "filter[0]", "not allowed"),
    ({"axes": {"parallelism.tp": [1]}, "colour": "red"}, "colour", "unknown key"),
    ({"mode": "random", "axes": {"parallelism.tp": [1]}}, "mode", "grid"),
]


@pytest.mark.parametrize(("doc", "field", "words"), BAD_SWEEPS)
def test_bad_sweeps_fail_before_any_point_runs(
    tmp_path: Path, doc: dict[str, Any], field: str, words: str
) -> None:
    write_yaml(tmp_path / "base.yaml", BASE_SCENARIO)
    sweep = write_yaml(tmp_path / "sweep.yaml", {"base": "base.yaml", **doc})
    with pytest.raises(ScenarioError) as info:
        run_batch(sweep, tmp_path / "out", workers=1, progress=False, simulate_fn=fake_simulate_fast)
    assert info.value.file == str(sweep) and info.value.field is not None and field in info.value.field
    assert words in str(info.value) and str(sweep) in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("base", "words"),
    [
        (None, "required key is missing"),
        ("nope.yaml", "not found"),
        ("bad.yaml", "training: required key is missing"),
    ],
)
def test_a_missing_or_bad_base_fails_naming_the_sweep(tmp_path: Path, base: str | None, words: str) -> None:
    write_yaml(tmp_path / "bad.yaml", {k: v for k, v in BASE_SCENARIO.items() if k != "training"})
    doc = {"axes": {"parallelism.tp": [1]}} | ({"base": base} if base else {})
    sweep = write_yaml(tmp_path / "sweep.yaml", doc)
    with pytest.raises(ScenarioError, match=words) as info:
        load_sweep(sweep)
    assert (info.value.file, info.value.field) == (str(sweep), "base")


def test_a_combination_fixed_by_another_axis_is_not_rejected(tmp_path: Path) -> None:
    moe_base = {**BASE_SCENARIO, "model": {"layers": 4, "hidden": 512, "heads": 8, "vocab": 1000}}
    write_yaml(
        tmp_path / "base.yaml", moe_base | {"model": {**moe_base["model"], "moe": {"experts": 2, "top_k": 1}}}
    )
    sweep = write_yaml(tmp_path / "sweep.yaml", {"base": "base.yaml", "mode": "zip", "axes": {
        "model.moe.experts": [4, 8], "model.moe.top_k": [4, 8]}})  # fmt: skip
    assert [p.scenario.model.moe.top_k for p in load_points(sweep) if p.scenario.model.moe] == [4, 8]
    bad = write_yaml(tmp_path / "bad.yaml", {"base": "base.yaml", "axes": {
        "model.moe.experts": [4], "model.moe.top_k": [8]}})  # fmt: skip
    with pytest.raises(ScenarioError, match="top_k=8 exceeds experts=4"):
        load_points(bad)


# ------------------------------------------------------------------------------- interrupts and kills
def test_an_interrupted_batch_resumes_with_every_point_stored_once(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, {"parallelism.tp": [1, 2, 4, 8], "cluster.nodes": [8, 16, 32, 64, 128]})
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        run_batch(sweep, out, workers=2, progress=False, simulate_fn=fake_simulate_interrupt)
    stored = len(store_rows(out))
    assert 0 < stored < 20 and not (out / "results.csv").exists()
    result = run_batch(sweep, out, workers=2, progress=False, simulate_fn=fake_simulate)
    assert (result.total, result.ran, result.cached, result.ok) == (20, 20 - stored, stored, 20)
    assert len(store_rows(out)) == 20 and len(read_csv(out / "results.csv")) == 20


def test_a_dead_worker_stops_the_batch_keeping_what_is_stored(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, {"parallelism.tp": [1, 2, 4, 8], "cluster.nodes": [8, 16, 32, 64, 128]})
    out = tmp_path / "out"
    with pytest.raises(WorkersLost, match="worker process died"):
        run_batch(sweep, out, workers=2, progress=False, simulate_fn=fake_simulate_crash)
    stored = {status for _, status in store_rows(out)}
    assert stored <= {"ok"} and len(store_rows(out)) < 20
    result = run_batch(sweep, out, workers=2, progress=False, simulate_fn=fake_simulate_fast)
    assert (result.ok, result.ran + result.cached) == (20, 20)


def test_a_killed_batch_loses_nothing_stored_and_resumes(tmp_path: Path) -> None:
    sweep = make_sweep(tmp_path, GRID_200)
    out = tmp_path / "out"
    script = (
        "import sys; from pathlib import Path; from simulator.batch.runner import run_batch; "
        "from batch_fakes import fake_simulate_slow; "
        "run_batch(Path(sys.argv[1]), Path(sys.argv[2]), workers=2, progress=False, simulate_fn=fake_simulate_slow)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(sweep), str(out)], env=env, start_new_session=True
    )
    try:
        _wait_for_rows(out, 40, proc)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with sqlite3.connect(out / STORE_FILE) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = len(store_rows(out))
    assert 40 <= stored < 200
    result = run_batch(sweep, out, workers=2, progress=False, simulate_fn=fake_simulate_fast)
    assert (result.ran, result.cached, result.ok) == (200 - stored, stored, 200)
    keys = [k for k, _ in store_rows(out)]
    assert len(keys) == len(set(keys)) == 200
    assert len(read_csv(out / "results.csv")) == 200


def _wait_for_rows(out: Path, n: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the batch ended before it was killed"
        if (out / STORE_FILE).exists():
            try:
                if len(store_rows(out)) >= n:
                    return
            except sqlite3.OperationalError:
                pass  # the table is being created
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} points stored after 30 s")


# ---------------------------------------------------------------------------------------- executors
def test_executors_are_registered_by_name() -> None:
    assert EXECUTORS.names() == ["dask", "local"]
    with pytest.raises(ScenarioError, match="valid: dask, local"):
        make_executor("slurm", ExecutorOptions())


def test_an_unreachable_scheduler_is_a_user_error() -> None:
    executor = make_executor("dask", ExecutorOptions(scheduler="tcp://127.0.0.1:9", connect_timeout_s=1.0))
    with pytest.raises(UserInputError, match="cannot reach the Dask scheduler"):
        list(executor.run(len, ["a"]))


def test_dask_cluster_gives_the_same_results_as_local_processes(tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    sweep = make_sweep(tmp_path, {"parallelism.tp": [1, 2, 4, 8], "parallelism.pp": [1, 2, 4, 8, 16]})
    local = run_batch(
        sweep, tmp_path / "local", workers=2, progress=False, simulate_fn=fake_simulate_infeasible
    )
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        remote = run_batch(
            sweep,
            tmp_path / "dask",
            scheduler=cluster.scheduler_address,
            progress=False,
            simulate_fn=fake_simulate_infeasible,
        )
    assert (remote.total, remote.ran, remote.ok, remote.infeasible) == (
        local.total,
        20,
        local.ok,
        local.infeasible,
    )
    assert (tmp_path / "local" / "results.csv").read_text() == (tmp_path / "dask" / "results.csv").read_text()
    for report in (tmp_path / "local" / "reports").glob("*.json"):
        assert report.read_text() == (tmp_path / "dask" / "reports" / report.name).read_text()


def test_store_put_replaces_and_never_duplicates(tmp_path: Path) -> None:
    from simulator.batch.store import PointOutcome

    with ResultStore.open(tmp_path) as store:
        store.put("k1", "h", PointOutcome("error", None, "boom"), label="a", swept={"x": 1})
        assert store.done_keys() == set()
        store.put("k1", "h", PointOutcome("infeasible", None, "too big"), label="a", swept={"x": 1})
        assert store.done_keys() == {"k1"} and store.count() == 1
        assert store.get_many(["k1", "k2"])["k1"].reason == "too big"
