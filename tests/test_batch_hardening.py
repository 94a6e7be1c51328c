"""Durable, cooperative batches (issue #12): every point checked before any runs, a cap on the sweep size,
filters that cannot exhaust the parser or the memory, corrupted or unwritable stores as one-line errors,
workers that die with their batch, and two batches on one store that share the work."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from batch_fakes import fake_simulate_fast

from simulator.batch.runner import run_batch
from simulator.batch.store import STORE_FILE, ResultStore, point_key
from simulator.batch.sweep import MAX_SWEEP_POINTS, load_points
from simulator.cli import main
from simulator.errors import ScenarioError, UserInputError

REPO = Path(__file__).resolve().parents[1]
# A real scenario (the default simulate function checks real clusters): gpt3-125m on one DGX A100.
REAL_BASE: dict[str, Any] = {
    "model": "gpt3-125m",
    "cluster": {"topology": "dgx-a100", "nodes": 1},
    "training": {"seq_len": 512, "global_batch": 8},
    "parallelism": {"tp": 2},
    "network": {"model": "analytical"},
}
# A fake cluster document (the fake simulate functions read nodes only).
FAKE_BASE: dict[str, Any] = {
    "model": "gpt3-125m",
    "cluster": {"topology": {"kind": "fake", "nodes": 2}},
    "training": {"seq_len": 512, "global_batch": 64},
}


def write_yaml(path: Path, doc: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def sweep_file(tmp_path: Path, axes: dict[str, Any], base: dict[str, Any] = REAL_BASE, **extra: Any) -> Path:
    write_yaml(tmp_path / "base.yaml", base)
    return write_yaml(tmp_path / "sweep.yaml", {"base": "base.yaml", "axes": axes, **extra})


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    return captured.err


# ------------------------------------------------------------------------------------ checked up front
def test_an_invalid_axis_value_fails_before_any_point_runs(tmp_path: Path, capsys: Any) -> None:
    """It passed the up-front check and every point was stored as "a point failed (a bug)"."""
    sweep = sweep_file(tmp_path, {"parallelism.tp": [1, 2], "cluster.overrides.colour": ["red"]})
    out = tmp_path / "out"
    assert main(["batch", str(sweep), "--out", str(out), "--workers", "1", "--no-progress"]) == 2
    line = one_line(capsys)
    assert str(sweep) in line and "cluster.overrides.colour" in line and "colour" in line
    assert not (out / STORE_FILE).exists()


def test_a_sweep_past_the_cap_is_refused_before_it_expands(tmp_path: Path) -> None:
    """4 axes of 100 values: 10^8 points expanded without a cap."""
    axes = {
        "training.seq_len": list(range(1, 101)),
        "training.global_batch": list(range(1, 101)),
        "training.micro_batch": list(range(1, 101)),
        "engine.seed": list(range(100)),
    }
    with pytest.raises(ScenarioError, match=f"100,000,000 points; at most {MAX_SWEEP_POINTS:,}") as e:
        load_points(sweep_file(tmp_path, axes))
    assert e.value.field == "axes"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("(1).real > 0", "only names and dotted keys"),  # an attribute of a constant: ValueError
        ("(" * 300 + "1" + ")" * 300, "nested"),  # the parser's own limit (a RecursionError once)
        ("not " * 200 + "tp", "nested deeper"),
        ("tp > " + "1" * 2000, "at most 1,000"),
    ],
)
def test_filters_that_would_crash_the_parser_are_one_line_errors(
    tmp_path: Path, text: str, words: str
) -> None:
    sweep = sweep_file(tmp_path, {"parallelism.tp": [1, 2]}, filter=text)
    with pytest.raises(ScenarioError, match=words):
        load_points(sweep)


def test_a_filter_that_would_fill_the_memory_is_an_error(tmp_path: Path) -> None:
    """Sequence repetition ("x" * 10**9) is not arithmetic on numbers."""
    sweep = sweep_file(tmp_path, {"parallelism.tp": [1, 2]}, filter="'x' * 1000000000000 == 'x'")
    with pytest.raises(ScenarioError, match="arithmetic needs numbers"):
        load_points(sweep)


# ------------------------------------------------------------------------------------------ the store
@pytest.mark.parametrize(
    "content",
    [b"just some text\n", os.urandom(4096), b"SQLite format 3\x00" + b"\x00" * 50],  # text, noise, truncated
    ids=["text", "random", "truncated"],
)
def test_a_corrupted_store_is_a_clear_error_with_a_way_out(
    tmp_path: Path, content: bytes, capsys: Any
) -> None:
    sweep = sweep_file(tmp_path, {"parallelism.tp": [1, 2]})
    out = tmp_path / "out"
    out.mkdir()
    (out / STORE_FILE).write_bytes(content)
    assert main(["batch", str(sweep), "--out", str(out), "--workers", "1", "--no-progress"]) == 2
    line = one_line(capsys)
    assert str(out / STORE_FILE) in line and "delete it to start over" in line


def test_a_store_truncated_half_way_is_a_clear_error(tmp_path: Path) -> None:
    sweep = sweep_file(tmp_path, {"engine.seed": list(range(40))}, base=FAKE_BASE)
    out = tmp_path / "out"
    run_batch(sweep, out, workers=1, progress=False, simulate_fn=fake_simulate_fast)
    path = out / STORE_FILE
    for extra in out.glob(f"{STORE_FILE}-*"):  # the WAL and its index: checkpoint them into the file first
        extra.unlink()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(UserInputError, match="results store"):
        run_batch(sweep, out, workers=1, progress=False, simulate_fn=fake_simulate_fast)


def test_an_unwritable_out_is_a_clear_error(tmp_path: Path, capsys: Any) -> None:
    sweep = sweep_file(tmp_path, {"parallelism.tp": [1, 2]})
    if os.geteuid() == 0:
        out = Path("/sys/clustersim-out")  # root ignores permission bits; /sys refuses it
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        out = ro / "out"
    assert main(["batch", str(sweep), "--out", str(out), "--workers", "1", "--no-progress"]) == 2
    assert "--out" in one_line(capsys)


# ----------------------------------------------------------------------------------------------- claims
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claims_of_a_dead_batch_are_taken_over(tmp_path: Path) -> None:
    sweep = sweep_file(tmp_path, {"engine.seed": list(range(6))}, base=FAKE_BASE)
    out = tmp_path / "out"
    keys = [point_key(p.scenario) for p in load_points(sweep)]
    with ResultStore.open(out) as store:
        store.pid, store.token = _dead_pid(), "killed-batch"
        assert store.claim(keys, since="") == set(keys)
    result = run_batch(sweep, out, workers=1, progress=False, simulate_fn=fake_simulate_fast)
    assert (result.ran, result.ok) == (6, 6)
    with sqlite3.connect(out / STORE_FILE) as conn:
        assert conn.execute("SELECT COUNT(*) FROM claims").fetchone() == (0,)


def test_a_point_claimed_by_a_live_batch_is_left_to_it(tmp_path: Path) -> None:
    """The batch computes the other points, waits, and counts the claimed one when its owner stores it."""
    from simulator.batch.store import PointOutcome

    sweep = sweep_file(tmp_path, {"engine.seed": list(range(4))}, base=FAKE_BASE)
    out = tmp_path / "out"
    points = load_points(sweep)
    keys = [point_key(p.scenario) for p in points]
    other = ResultStore.open(out)  # another batch of this process: a live owner with its own token
    assert other.claim(keys[:1], since="") == {keys[0]}
    outcome: dict[str, Any] = {}

    def batch() -> None:
        outcome["result"] = run_batch(sweep, out, workers=1, progress=False, simulate_fn=fake_simulate_fast)

    thread = threading.Thread(target=batch)
    thread.start()
    try:
        deadline = time.monotonic() + 60  # a bound on a hang, not a timing assertion
        while len(ResultStore.open(out).done_keys()) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert thread.is_alive(), "the batch did not wait for the claimed point"
        report = fake_simulate_fast(points[0].scenario).model_dump_json()
        other.put(keys[0], points[0].scenario.content_hash(), PointOutcome("ok", report), label="x", swept={})
    finally:
        thread.join(60)
        other.close()
    assert not thread.is_alive()
    result = outcome["result"]
    assert (result.total, result.ran, result.cached, result.ok) == (4, 3, 1, 4)


def _batch_env(log: Path) -> dict[str, str]:
    """Environment of a batch run in a child process: the repository and the test fakes importable, the fake
    simulator logging each point it computes to ``log``."""
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")]),
        "CLUSTERSIM_FAKE_LOG": str(log),
    }


def test_two_batches_on_one_store_compute_each_point_once(tmp_path: Path) -> None:
    sweep = sweep_file(tmp_path, {"engine.seed": list(range(24))}, base=FAKE_BASE)
    out, log = tmp_path / "out", tmp_path / "computed.log"
    script = (
        "import sys; from pathlib import Path; from simulator.batch.runner import run_batch; "
        "from batch_fakes import fake_simulate_logged; "
        "r = run_batch(Path(sys.argv[1]), Path(sys.argv[2]), workers=1, progress=False, "
        "simulate_fn=fake_simulate_logged); print(r.ran, r.ok)"
    )
    env = _batch_env(log)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(sweep), str(out)], env=env, stdout=subprocess.PIPE
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0].decode().split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    ran = [int(o[0]) for o in outputs]
    assert sum(ran) == 24 and all(int(o[1]) == 24 for o in outputs), outputs
    computed = [line.split()[1] for line in log.read_text().splitlines()]
    assert len(computed) == len(set(computed)) == 24


# ---------------------------------------------------------------------------------------------- workers
def test_workers_die_with_their_batch(tmp_path: Path) -> None:
    """SIGKILL of the batch process (not its group) leaves no worker behind."""
    sweep = sweep_file(tmp_path, {"engine.seed": list(range(200))}, base=FAKE_BASE)
    out, log = tmp_path / "out", tmp_path / "computed.log"
    script = (
        "import sys; from pathlib import Path; from simulator.batch.runner import run_batch; "
        "from batch_fakes import fake_simulate_logged; "
        "run_batch(Path(sys.argv[1]), Path(sys.argv[2]), workers=2, progress=False, "
        "simulate_fn=fake_simulate_logged)"
    )
    env = _batch_env(log)
    proc = subprocess.Popen([sys.executable, "-c", script, str(sweep), str(out)], env=env)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            pids = {int(line.split()[0]) for line in log.read_text().splitlines()} if log.exists() else set()
            if len(pids) >= 2 or proc.poll() is not None:
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert len(pids) >= 1, "no worker started"

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # a zombie that is already dead but not reaped counts as gone
        stat = Path(f"/proc/{pid}/stat")
        return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))

    deadline = time.monotonic() + 30  # a bound on the wait, not a timing assertion
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids), f"workers {pids} outlived their batch"
