"""Predictions against published measured runs (the packaged validation data), through the same code path
as ``clustersim validate``. Tolerances are the suites' own (simulator/validation/suites.yaml)."""

from __future__ import annotations

import json

import pytest

from simulator.cli import main
from simulator.validation import command
from simulator.validation.layer import korthikanti_cases, layer_times
from simulator.validation.suites import run_rows, suite_rows


def _errors(suite: str) -> list[tuple[str, float, float]]:
    return [(r.row.name, r.error, r.row.tolerance) for r in run_rows(list(suite_rows([suite])), workers=2)]


def test_megatron_sc21_table_every_row_within_15_percent():
    """Issue #2: all ten rows of Narayanan et al. 2021 Table 1 (1.7B-1T, 32-3,072 A100) within ±15%."""
    rows = _errors("megatron-2021-a100")
    assert len(rows) == 10
    bad = [(name, round(100 * err, 1)) for name, err, _ in rows if abs(err) > 0.15]
    assert not bad, bad


def test_korthikanti_layer_times_within_10_percent():
    """Issue #4: one 22B layer, forward and backward, five recompute / sequence-parallel variants."""
    for case in korthikanti_cases():
        fwd, bwd = layer_times(case)
        assert fwd == pytest.approx(case.forward_s, rel=0.10), case.config
        assert bwd == pytest.approx(case.backward_s, rel=0.10), case.config


@pytest.mark.parametrize(
    "suite", ["korthikanti-2022-e2e-a100", "llama3-405b-h100", "bloom-176b-a100", "megatron-readme-h100"]
)
def test_suites_within_their_tolerance(suite):
    """Runs the calibration never saw (A100 end-to-end iterations of Korthikanti 2022, Llama 3 405B on
    8,192-16,384 H100, BLOOM-176B) and the H100's fitting data (the Megatron-Core README table)."""
    bad = [(name, round(100 * err, 1)) for name, err, tol in _errors(suite) if abs(err) > tol]
    assert not bad, bad


def test_validate_command_prints_rows_and_fails_outside_tolerance(capsys, monkeypatch):
    assert main(["validate", "--suite", "korthikanti-2022-layer", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["rows"]) == 10 and "median |error|" in doc["summary"]
    monkeypatch.setattr(command, "LAYER_TOLERANCE", 1e-6)  # nothing is that accurate: must exit 1
    assert main(["validate", "--suite", "korthikanti-2022-layer"]) == 1
    assert "outside tolerance" in capsys.readouterr().out


def test_unknown_suite_is_a_user_error(capsys):
    assert main(["validate", "--suite", "nope"]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
