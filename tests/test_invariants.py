"""Invariants checked at the end of every run (issue #12): a broken one is a bug report (exit 3)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from simulator.cli import main
from simulator.errors import InternalError
from simulator.report.invariants import check_invariants, violations
from simulator.scenario import scenario_from_dict
from simulator.simulate import simulate

DOC: dict[str, Any] = {
    "name": "invariants",
    "model": "gpt3-125m",
    "cluster": {"topology": "dgx-a100", "nodes": 1},
    "training": {"seq_len": 512, "global_batch": 16, "micro_batch": 2},
    "parallelism": {"tp": 2, "pp": 2},
}


@pytest.fixture(scope="module")
def result() -> Any:
    return simulate(scenario_from_dict(DOC))


def test_a_real_step_holds_every_invariant(result):
    assert violations(result.report, result.trace) == ([], [])


def _broken(report: Any, **changes: Any) -> Any:
    return report.model_copy(update=changes)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda r: {"step_time_s": r.step_time_s * 1.01}, "breakdown sums to"),
        (lambda r: {"mfu": r.hfu + 0.01}, "exceeds HFU"),
        (lambda r: {"hfu": 1.5, "mfu": 1.2}, "exceeds 1"),
        (lambda r: {"tokens_per_s": r.tokens_per_s * 2}, "tokens_per_s"),
        (lambda r: {"samples_per_s": math.inf}, "is inf"),
        (lambda r: {"mfu": math.nan}, "is nan"),
        (lambda r: {"breakdown": r.breakdown.model_copy(update={"bubble_s": -1.0})}, "negative"),
    ],
)
def test_a_broken_invariant_is_an_internal_error_naming_the_scenario(result, change, words):
    bad = _broken(result.report, **change(result.report))
    with pytest.raises(InternalError, match=words) as e:
        check_invariants(bad, scenario="s.yaml (scenario invariants)")
    assert "s.yaml" in str(e.value)


def test_ops_that_end_before_they_start_are_caught(result):
    trace = result.trace
    original = trace.end_s.copy()
    try:
        trace.end_s[0] = trace.start_s[0] - 1.0
        errors, _ = violations(result.report, trace)
    finally:
        trace.end_s[:] = original
    assert any("end before they start" in e for e in errors)


def test_link_utilisation_above_one_is_reported(result):
    """Under the flow model a link above 100% is a bug report; under the analytical model (no sharing between
    kinds of traffic, by design) a warning that says why. Never silent."""
    links = list(result.report.links)
    assert links, "the test scenario moves bytes over links"
    bad = _broken(result.report, links=[links[0].model_copy(update={"utilization": 1.5}), *links[1:]])
    with pytest.raises(InternalError, match="above 100%"):
        check_invariants(bad, contention=True)
    report = check_invariants(bad, contention=False)
    assert any("above 100%" in w and "analytical" in w for w in report.warnings)


def test_the_cli_prints_a_bug_report_and_exits_3(write_scenario, capsys, monkeypatch):
    import simulator.simulate as sim

    real = sim._report

    def corrupt(*args: Any, **kwargs: Any) -> Any:
        report = real(*args, **kwargs)
        return report.model_copy(update={"mfu": report.hfu * 2})

    monkeypatch.setattr(sim, "_report", corrupt)
    path = write_scenario(DOC, "broken")
    assert main(["run", str(path), "--json"]) == 3
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert "internal error" in captured.err and str(path) in captured.err and "exceeds HFU" in captured.err


def test_unmatched_point_to_point_bytes_are_a_bug(result):
    """Every byte sent point to point is received: a mismatch is an invariant violation."""
    errors, _ = violations(result.report, p2p_bytes=(2.0e9, 1.0e9))
    assert any("sent point to point" in e for e in errors)
    assert not violations(result.report, p2p_bytes=(1.0e9, 1.0e9))[0]
