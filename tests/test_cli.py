"""The command line (DESIGN.md, "CLI" and "JSON report"): help for every command, ``run --json`` prints
exactly the contract's object, the same input gives byte-identical JSON (in one process and in two), and
``run --out`` writes the report and a PNG breakdown chart."""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from simulator.cli import build_parser, main

REPO = Path(__file__).resolve().parents[1]

# The JSON contract of DESIGN.md: top-level keys, and the keys of its nested objects.
CONTRACT = {
    "scenario", "gpus", "step_time_s", "tokens_per_s", "samples_per_s", "model_tflops_per_gpu", "mfu", "hfu",
    "breakdown", "comm", "memory_gib_per_gpu", "fits_memory", "simulated_ranks", "events", "wall_s",
}  # fmt: skip
NESTED = {
    "breakdown": {"compute_s", "exposed_comm_s", "overlapped_comm_s", "bubble_s", "other_s"},
    "comm": {"tp_s", "dp_s", "pp_s", "ep_s", "cp_s"},
    "memory_gib_per_gpu": {"weights", "grads", "optimizer", "activations", "other", "total"},
}
A100_BF16_PEAK = 312e12  # dense BF16 FLOP/s of an A100 SXM (NVIDIA datasheet; REFERENCE.md)

# gpt3-125m on one DGX A100 (8 GPUs) as tp 2 · pp 2 · dp 2: every kind of communication but EP/CP
SCENARIO: dict[str, Any] = {
    "name": "cli-test",
    "model": "gpt3-125m",
    "cluster": {"topology": "dgx-a100", "nodes": 1},
    "training": {"seq_len": 512, "global_batch": 16, "micro_batch": 2, "precision": "bf16"},
    "parallelism": {"tp": 2, "pp": 2, "zero": 1},
}


@pytest.fixture
def scenario_file(write_scenario) -> Path:
    """The test scenario, written to a temporary folder."""
    return write_scenario(SCENARIO, "cli-test")


def run_json(capsys, *argv: str) -> tuple[str, dict[str, Any]]:
    """``main([...])`` with ``--json``: stdout text and the parsed object."""
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out, json.loads(captured.out)


def canonical(report: dict[str, Any]) -> bytes:
    """The report without its wall-clock time, dumped with sorted keys."""
    return json.dumps({k: v for k, v in report.items() if k != "wall_s"}, sort_keys=True).encode()


# ------------------------------------------------------------------------------------------------- help
def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subs) == 1
    return dict(subs[0].choices)


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return " ".join(captured.out.split())


def test_top_level_help_lists_every_command(capsys):
    text = _help(capsys, ["--help"])
    assert text.startswith("usage: clustersim")
    assert "Simulate distributed LLM training" in text
    subs = _subcommands()
    assert {"run", "validate"} <= set(subs)
    for name in subs:
        assert name in text


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_every_command_has_help(capsys, command):
    """``clustersim COMMAND --help`` exits 0 with a usage line and a description of what it does."""
    description = _subcommands()[command].description or ""
    assert len(description.split()) >= 8, f"{command} needs a description"
    text = _help(capsys, [command, "--help"])
    assert text.startswith(f"usage: clustersim {command}")
    assert " ".join(description.split()) in text
    assert "--help" in text


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["simulate-everything"])
    assert exc.value.code == 2
    assert capsys.readouterr().out == ""


# ------------------------------------------------------------------------------------------- run --json
def test_run_json_prints_exactly_the_contract(scenario_file, capsys):
    out, report = run_json(capsys, "run", str(scenario_file))
    assert out.endswith("\n") and out.count("\n") == 1  # one object, on one line
    assert isinstance(report, dict)
    assert set(report) >= CONTRACT
    for key, fields in NESTED.items():
        assert set(report[key]) >= fields, key
    b = report["breakdown"]
    step = report["step_time_s"]
    assert step > 0
    total = b["compute_s"] + b["exposed_comm_s"] + b["bubble_s"] + b["other_s"]
    assert math.isclose(total, step, rel_tol=1e-9)
    assert all(v >= 0 for v in b.values())


def test_run_json_figures_agree_with_each_other(scenario_file, capsys):
    """Throughput from the step time and the batch; MFU from model TFLOP/s and the A100's BF16 peak."""
    _, r = run_json(capsys, "run", str(scenario_file))
    t = SCENARIO["training"]
    assert r["scenario"] == "cli-test"
    assert r["gpus"] == 8
    assert r["tokens_per_s"] == pytest.approx(t["global_batch"] * t["seq_len"] / r["step_time_s"], rel=1e-12)
    assert r["samples_per_s"] == pytest.approx(t["global_batch"] / r["step_time_s"], rel=1e-12)
    assert r["mfu"] == pytest.approx(r["model_tflops_per_gpu"] * 1e12 / A100_BF16_PEAK, rel=1e-9)
    assert 0 < r["mfu"] <= r["hfu"] < 1
    mem = r["memory_gib_per_gpu"]
    parts = sum(v for k, v in mem.items() if k != "total")
    assert mem["total"] == pytest.approx(parts, rel=1e-9)
    assert r["fits_memory"] is True  # 125M parameters: a few GiB per GPU, far below 80 GB
    assert 1 <= r["simulated_ranks"] <= r["gpus"]
    assert r["events"] > 0 and r["wall_s"] > 0
    for kind in ("tp_s", "dp_s", "pp_s"):
        assert r["comm"][kind] > 0, kind  # tp, dp and pp are all > 1 here
    assert r["comm"]["ep_s"] == r["comm"]["cp_s"] == 0


def test_run_set_overrides_the_scenario(scenario_file, capsys):
    """``--set`` changes the simulated layout (here pp 2 → 1 removes pipeline traffic and bubble)."""
    _, r = run_json(capsys, "run", str(scenario_file), "--set", "parallelism.pp=1")
    assert r["comm"]["pp_s"] == 0 and r["breakdown"]["bubble_s"] == 0
    assert r["layout"]["pp"] == 1 and r["layout"]["dp"] == 4


def test_run_reports_a_layout_that_does_not_fit(scenario_file, capsys):
    """GPT-3 175B on 4 GPUs per replica: 16-bit weights alone are 175e9·2 B / 4 ≈ 81 GiB per GPU."""
    _, r = run_json(capsys, "run", str(scenario_file), "--set", "model=gpt3-175b")
    assert r["fits_memory"] is False
    assert r["memory_gib_per_gpu"]["weights"] > 175e9 * 2 / 4 / 2**30 * 0.95
    assert r["memory_gib_per_gpu"]["total"] > 80


def test_same_input_gives_byte_identical_json(scenario_file, capsys):
    _, a = run_json(capsys, "run", str(scenario_file))
    _, b = run_json(capsys, "run", str(scenario_file))
    assert canonical(a) == canonical(b)


def test_same_input_gives_byte_identical_json_across_processes(scenario_file, tmp_path):
    outs = []
    for seed in ("1", "2"):  # different string hashing in each process
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-m", "simulator.cli", "run", str(scenario_file), "--json"],
            capture_output=True, text=True, cwd=tmp_path, env=env, check=True,
        )  # fmt: skip
        outs.append(canonical(json.loads(proc.stdout)))
    assert outs[0] == outs[1]


def test_run_prints_a_table_without_json(scenario_file, capsys):
    assert main(["run", str(scenario_file)]) == 0
    out = capsys.readouterr().out
    for text in ("step time", "tokens/s", "MFU", "bubble"):
        assert text in out, text
    with pytest.raises(json.JSONDecodeError):
        json.loads(out)


# -------------------------------------------------------------------------------------------- run --out
def test_run_out_writes_report_and_breakdown_chart(scenario_file, tmp_path, capsys):
    out_dir = tmp_path / "out" / "nested"
    _, printed = run_json(capsys, "run", str(scenario_file), "--out", str(out_dir))
    written = json.loads((out_dir / "report.json").read_text())
    assert canonical(written) == canonical(printed)
    charts = [p for p in out_dir.glob("*.png") if "breakdown" in p.name]
    assert charts, sorted(p.name for p in out_dir.iterdir())
    for chart in charts:
        assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert chart.stat().st_size > 1000
