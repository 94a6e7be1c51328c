"""``clustersim batch`` and ``clustersim compare`` end to end through ``simulator.cli.main``, on a small real
sweep (GPT-3 125M on two DGX A100 hosts: each point simulates in about 0.1 s), and the trace and timeline
outputs of ``clustersim run``."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from batch_fakes import fake_simulate_buggy, fake_simulate_interrupt

import simulator.commands.batch as batch_cmd
from simulator.batch.executors.base import WorkersLost
from simulator.batch.runner import run_batch
from simulator.batch.store import STORE_FILE, ResultStore
from simulator.cli import main
from simulator.scenario import load_scenario
from simulator.simulate import simulate

BASE: dict[str, Any] = {
    "name": "tiny",
    "model": "gpt3-125m",  # 12 heads: tp = 8 and 16 are infeasible
    "cluster": {"topology": "dgx-a100", "nodes": 2},
    "training": {"seq_len": 1024, "global_batch": 32, "micro_batch": 1, "precision": "bf16"},
    "parallelism": {"tp": 2, "pp": 2},
}
AXES = {"parallelism.tp": [1, 2, 4, 8, 16], "parallelism.pp": [1, 2]}  # 10 points: 6 ok, 4 infeasible
OK_POINTS, INFEASIBLE_POINTS = 6, 4
CHARTS = ("breakdown", "throughput_mfu", "memory", "heatmap")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_yaml(path: Path, doc: Any) -> Path:
    """Write ``doc`` as YAML (creating folders) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def make_sweep(folder: Path, axes: dict[str, Any] | None = None) -> Path:
    """The base scenario and a sweep over ``axes`` (default ``AXES``) in ``folder``."""
    write_yaml(folder / "base.yaml", BASE)
    return write_yaml(folder / "sweep.yaml", {"name": "tiny", "base": "base.yaml", "axes": axes or AXES})


def read_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def local_batch(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """(sweep file, output folder, printed summary) of the sweep run once on 2 local processes."""
    folder = tmp_path_factory.mktemp("batch")
    sweep, out = make_sweep(folder), folder / "out"
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        code = main(["batch", str(sweep), "--out", str(out), "--workers", "2", "--no-progress"])
    assert code == 0
    return sweep, out, summary.getvalue()


# ------------------------------------------------------------------------------------------------ batch
def test_batch_writes_every_point_then_reruns_from_the_store(
    local_batch: tuple[Path, Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    sweep, out, summary = local_batch
    assert "10 points: 10 ran, 0 cached · 6 ok, 4 infeasible, 0 failed" in summary
    assert "infeasible ×2: parallelism.tp: tp=8 does not divide heads=12" in summary
    assert f"results: {out / 'results.csv'}" in summary
    rows = read_rows(out / "results.csv")
    assert [(r["parallelism.tp"], r["parallelism.pp"]) for r in rows] == [
        (str(tp), str(pp)) for tp in AXES["parallelism.tp"] for pp in AXES["parallelism.pp"]
    ]
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == OK_POINTS and sum(r["status"] == "infeasible" and r["reason"] != "" for r in rows) == 4
    for row in ok:  # every headline metric is there, and consistent with the JSON report
        assert all(row[c] != "" for c in ("step_time_s", "tokens_per_s", "mfu", "memory_gib_per_gpu.total"))
        report = json.loads((out / "reports" / f"{row['label']}.json").read_text())
        assert report["gpus"] == 16 and float(row["step_time_s"]) == report["step_time_s"]
        assert report["tokens_per_s"] == pytest.approx(32 * 1024 / report["step_time_s"])
    assert len(list((out / "reports").glob("*.json"))) == OK_POINTS
    before = (out / "results.csv").read_text()
    assert main(["batch", str(sweep), "--out", str(out), "--workers", "2", "--no-progress"]) == 0
    assert "10 points: 0 ran, 10 cached · 6 ok, 4 infeasible, 0 failed" in capsys.readouterr().out
    assert (out / "results.csv").read_text() == before


def test_dask_local_cluster_gives_the_same_rows(local_batch: tuple[Path, Path, str], tmp_path: Path) -> None:
    distributed = pytest.importorskip("distributed")
    sweep, local_out, _ = local_batch
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as cluster:
        args = [
            "batch",
            str(sweep),
            "--out",
            str(tmp_path / "dask"),
            "--scheduler",
            cluster.scheduler_address,
        ]
        assert main([*args, "--no-progress"]) == 0
    assert read_rows(tmp_path / "dask" / "results.csv") == read_rows(local_out / "results.csv")


@pytest.mark.parametrize(
    ("axes", "axis", "words"),
    [
        ({"parallelism.tpp": [1, 2]}, "parallelism.tpp", "did you mean 'tp'"),
        ({"parallelism.tp": []}, "parallelism.tp", "empty"),
        ({"training.micro_batch": ["two"]}, "training.micro_batch", "two"),
    ],
)
def test_a_bad_sweep_exits_2_naming_the_axis_and_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], axes: dict[str, Any], axis: str, words: str
) -> None:
    sweep = make_sweep(tmp_path, axes)
    assert main(["batch", str(sweep), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("clustersim: error: ") and "\n" not in err
    assert axis in err and words in err and str(sweep) in err
    assert not (tmp_path / "out").exists()


def test_an_interrupted_batch_says_how_much_is_stored_and_exits_130(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = make_sweep(tmp_path, {"parallelism.tp": [1, 2, 4, 8], "cluster.nodes": [16, 32]})

    def interrupted_batch(source: Path, out_dir: Path, **_: Any) -> Any:  # Ctrl-C on the point tp 8, 32 nodes
        return run_batch(source, out_dir, workers=1, progress=False, simulate_fn=fake_simulate_interrupt)

    monkeypatch.setattr(batch_cmd, "run_batch", interrupted_batch)
    assert main(["batch", str(sweep), "--out", str(tmp_path / "out")]) == 130
    err = capsys.readouterr().err
    found = re.search(r"^interrupted: (\d+) points stored; re-run the same command to resume$", err, re.M)
    assert found is not None, err
    with ResultStore.open(tmp_path / "out") as store:
        assert int(found.group(1)) == store.count() == 7  # every point but the interrupted one


def test_failed_points_and_lost_workers_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = make_sweep(tmp_path, {"parallelism.tp": [2, 4]})

    def buggy_batch(source: Path, out_dir: Path, **_: Any) -> Any:  # a bug (ZeroDivisionError) at tp 4
        return run_batch(source, out_dir, workers=1, progress=False, simulate_fn=fake_simulate_buggy)

    monkeypatch.setattr(batch_cmd, "run_batch", buggy_batch)
    assert main(["batch", str(sweep), "--out", str(tmp_path / "out")]) == 1
    out = capsys.readouterr().out
    assert "2 points: 2 ran, 0 cached · 1 ok, 0 infeasible, 1 failed" in out
    assert "failed ×1: ZeroDivisionError: division by zero" in out and STORE_FILE in out

    def lost(*_: Any, **__: Any) -> Any:
        raise WorkersLost("a worker process died")

    monkeypatch.setattr(batch_cmd, "run_batch", lost)
    assert main(["batch", str(sweep), "--out", str(tmp_path / "out")]) == 1
    assert "a worker process died; 1 points stored; re-run to resume" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- compare
def test_compare_draws_every_chart_and_the_html_report(
    local_batch: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, out, _ = local_batch
    charts = tmp_path / "charts"
    assert main(["compare", str(out), "--out", str(charts)]) == 0
    assert "6 reports compared; 4 points without a report (infeasible or failed)" in capsys.readouterr().out
    for name in CHARTS:  # the heat-map: tp × pp, the two swept axes that vary
        assert (charts / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        assert "<svg" in (charts / f"{name}.svg").read_text()[:2000]
    assert not (charts / "scaling.png").exists()  # one GPU count: no scaling curve
    page = (charts / "report.html").read_text()
    assert page.count("<tr>") == 1 + OK_POINTS + INFEASIBLE_POINTS  # header, every point
    assert page.count('src="data:image/svg+xml;base64,') == len(CHARTS) and "does not divide heads" in page
    rows = read_rows(charts / "comparison.csv")
    assert [r["status"] for r in rows].count("infeasible") == 4 and rows[0]["parallelism.tp"] == "1"


def test_compare_reads_run_outputs_and_draws_scaling_curves(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = write_yaml(tmp_path / "tiny.yaml", BASE)
    assert main(["run", str(scenario), "--out", str(tmp_path / "run1")]) == 0
    assert main(["run", str(scenario), "--set", "cluster.nodes=1", "--json"]) == 0
    (tmp_path / "one-node.json").write_text(capsys.readouterr().out.splitlines()[-1])
    charts = tmp_path / "charts"
    args = ["compare", str(tmp_path / "run1"), str(tmp_path / "one-node.json"), "--out", str(charts)]
    assert main([*args, "--x", "gpus", "--y", "tp", "--metric", "tokens_per_s", "--format", "png"]) == 0
    for name in ("breakdown", "throughput_mfu", "memory", "scaling", "heatmap"):  # 8 and 16 GPUs
        assert (charts / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
        assert not (charts / f"{name}.svg").exists()
    assert 'src="data:image/png;base64,' in (charts / "report.html").read_text()


@pytest.mark.parametrize(
    ("content", "extra", "words"),
    [
        (None, [], "no results.csv"),
        ("{not json", [], "not a clustersim JSON report"),
        ('{"scenario": "x"}', [], "not a clustersim JSON report: gpus: Field required (and"),
        ("REPORT", ["--x", "tp"], "give both --x and --y"),
        ("REPORT", ["--metric", "speed"], "no column 'speed'"),
        ("REPORT", ["--format", "jpg"], "--format"),
    ],
)
def test_compare_errors_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None, extra: list[str], words: str
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    if content is not None:
        text = make_report_json() if content == "REPORT" else content
        (folder / "a.json").write_text(text)
    assert main(["compare", str(folder), "--out", str(tmp_path / "charts"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and words in err, err
    if content is not None and content != "REPORT":
        assert str(folder / "a.json") in err
    assert not (tmp_path / "charts").exists()


def make_report_json() -> str:
    """A valid report: the one of a stored batch-test point, rebuilt here without running anything."""
    from batch_fakes import fake_report

    from simulator.scenario import scenario_from_dict

    return fake_report(scenario_from_dict(BASE, file="tiny.yaml", base_dir=Path("."))).model_dump_json()


# -------------------------------------------------------------------------------------- trace, timeline
def test_run_writes_a_chrome_trace_with_one_slice_per_op_and_a_timeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    scenario = write_yaml(tmp_path / "tiny.yaml", BASE)
    trace_path, png = tmp_path / "trace.json", tmp_path / "timeline.png"
    assert main(["run", str(scenario), "--trace", str(trace_path), "--timeline", str(png)]) == 0
    capsys.readouterr()
    trace = simulate(load_scenario(scenario)).trace
    events = json.loads(trace_path.read_text())["traceEvents"]
    slices = [e for e in events if e["ph"] == "X"]
    assert len(slices) == len(trace) > 0
    assert {e["pid"] for e in slices} == {int(r) + 1 for r in set(trace.rank.tolist())}
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert {(e["pid"], e["tid"]) for e in slices} <= set(names) and "compute" in names.values()
    assert all(e["dur"] >= 0 and {"bytes", "model_flops"} <= set(e["args"]) for e in slices)
    assert sum(e["args"]["model_flops"] for e in slices) == pytest.approx(float(trace.model_flops.sum()))
    assert png.read_bytes()[:8] == PNG_MAGIC
