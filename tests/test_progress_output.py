"""Long commands say what they are doing, and output that is not a terminal is complete (issue #10, points
4 and 5): a rich bar on stderr when stderr is a terminal, one line per stage otherwise, never on stdout;
tables printed into a pipe or a file keep every name whole instead of squeezing into 80 columns."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from simulator.cli import main
from simulator.report import progress
from simulator.report.progress import BarReporter, LineReporter, reporting

LONG_NAME = "a-scenario-name-much-longer-than-eighty-columns-" + "x" * 60


def test_stages_are_silent_outside_a_command() -> None:
    progress.stage("nobody listens", total=3)  # library code called from a test or a notebook
    progress.advance()


def test_one_line_per_stage_when_stderr_is_not_a_terminal(capsys: Any) -> None:
    with reporting("search"):  # pytest's captured stderr is not a terminal
        progress.stage("fast pass", total=3)
        for _ in range(3):
            progress.advance()
        progress.stage("refining")
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("clustersim search [") and err[0].endswith("]: fast pass")
    assert err[1].endswith("]: refining")


def test_the_bar_runs_its_stages_to_completion() -> None:
    bar = BarReporter("validate")
    bar.progress.console.file = io.StringIO()  # not the test's terminal
    bar.stage("simulating 2 published runs", total=2)
    bar.advance()
    bar.stage("spinner without a total")
    bar.close()
    first, second = bar.progress.tasks
    assert first.completed == first.total == 2 and second.finished


def test_line_reporter_writes_where_told() -> None:
    out = io.StringIO()
    LineReporter("plan", out).stage("costing the training run")
    assert out.getvalue().startswith("clustersim plan [") and out.getvalue().endswith(
        "costing the training run\n"
    )


def test_run_full_reports_progress_on_stderr_and_keeps_stdout_json(
    make_doc: Any, write_scenario: Any, capsys: Any
) -> None:
    path = write_scenario(make_doc(tp=2, pp=2), "small")
    assert main(["run", str(path), "--full", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["gpus"] == 8  # stdout is the one JSON document
    assert "clustersim run [" in err and "--full" in err
    assert main(["run", str(path), "--json"]) == 0  # a symmetric run is quick: no progress lines
    assert capsys.readouterr().err == ""


def test_search_reports_its_stages(make_doc: Any, write_scenario: Any, tmp_path: Path, capsys: Any) -> None:
    path = write_scenario(make_doc(), "small")
    out = tmp_path / "search"
    assert (
        main(["search", str(path), "--max-points", "4", "--workers", "1", "--out", str(out), "--json"]) == 0
    )
    err = capsys.readouterr().err
    assert "clustersim search [" in err and "searching the layouts" in err and f"writing {out}" in err


def test_piped_run_summary_keeps_every_name_whole(make_doc: Any, write_scenario: Any, capsys: Any) -> None:
    """The summary printed into a pipe (capsys is not a terminal): the long scenario name and every link
    name appear whole on one line, as a terminal of any width would not promise."""
    doc = make_doc(nodes=2, tp=2)
    doc["name"] = LONG_NAME
    assert main(["run", str(write_scenario(doc, "long"))]) == 0
    out = capsys.readouterr().out
    assert LONG_NAME in out.splitlines()
    assert "…" not in out
    assert "Busiest links, NIC - leaf (5 of 32)" in [line.rstrip() for line in out.splitlines()]
    tier_rows = [line for line in out.splitlines() if line.startswith("│ NIC - leaf")]
    assert tier_rows and all(" -> " in line for line in tier_rows)  # the busiest link, not folded
