"""The command line (docs/design.md, "CLI" and "JSON report"): help for every command, ``run --json`` prints
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

# The JSON contract of docs/design.md: top-level keys, and the keys of its nested objects.
CONTRACT = {
    "scenario", "gpus", "step_time_s", "tokens_per_s", "samples_per_s", "model_tflops_per_gpu", "mfu", "hfu",
    "breakdown", "comm", "memory_gib_per_gpu", "fits_memory", "simulated_ranks", "events", "wall_s",
}  # fmt: skip
NESTED = {
    "breakdown": {"compute_s", "exposed_comm_s", "overlapped_comm_s", "bubble_s", "other_s"},
    "comm": {"tp_s", "dp_s", "pp_s", "ep_s", "cp_s"},
    "memory_gib_per_gpu": {"weights", "grads", "optimizer", "activations", "other", "total"},
}
A100_BF16_PEAK = 312e12  # dense BF16 FLOP/s of an A100 SXM (NVIDIA datasheet; docs/reference.md)

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


# ------------------------------------------------------------------------ output and input paths (#10.6, #12)
def _refused(capsys, argv: list[str], *expect: str) -> str:
    """``main(argv)`` exits 2 with one stderr line containing ``expect``, and nothing on stdout."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    line = captured.err.rstrip("\n")
    assert line.startswith("clustersim: error: ") and "Traceback" not in line
    for text in expect:
        assert text in line, (text, line)
    return line


@pytest.fixture
def no_simulation(monkeypatch):
    """Fail the test if the command gets as far as simulating: paths must be checked before."""
    import simulator.commands.run as run_module

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("simulated before checking the output paths")

    monkeypatch.setattr(run_module, "simulate", boom)


def _unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (root ignores permission bits; /sys refuses it)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    return folder


@pytest.mark.parametrize(
    ("flag", "target", "expect"),
    [
        ("--out", "a-file", ("--out", "is a file, not a folder")),  # FileExistsError after simulating
        ("--out", "a-file/below", ("--out", "is a file, not a folder")),
        ("--timeline", "step.pdf", ("--timeline", ".png or .svg", "'.pdf'")),  # ValueError after simulating
        ("--timeline", "step.txt", ("--timeline", ".png or .svg", "'.txt'")),
        ("--timeline", "a-folder", ("--timeline", ".png or .svg")),
        ("--trace", "a-folder", ("--trace", "is a folder")),
        ("--trace", "a-file/trace.json", ("--trace", "is a file, not a folder")),
        ("--out", "x" * 300, ("--out", "300 bytes long", "at most 255")),
        ("--trace", "t" * 250 + ".json", ("--trace", "at most 223")),
        ("--out", "loop/below", ("--out", "leads nowhere", "symbolic links")),
    ],
)
def test_output_paths_are_checked_before_simulating(
    flag, target, expect, scenario_file, tmp_path, capsys, monkeypatch, no_simulation
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop")
    line = _refused(capsys, ["run", str(scenario_file), flag, target], *expect)
    assert target[:40] in line
    assert (tmp_path / "a-file").read_text() == "not a folder\n"


def test_an_unwritable_out_is_refused_before_simulating(scenario_file, tmp_path, capsys, no_simulation):
    folder = _unwritable_dir(tmp_path)
    _refused(capsys, ["run", str(scenario_file), "--out", str(folder / "out")], "--out", "cannot write in")


def test_a_failed_write_leaves_no_partial_file(scenario_file, tmp_path, capsys, monkeypatch):
    """A disk that fills while writing: one line naming the file, and no half-written report.json."""
    import simulator.report.style as style

    def full(self: Path, *args: Any, **kwargs: Any) -> int:
        raise OSError(28, os.strerror(28))  # ENOSPC

    monkeypatch.setattr(style.Path, "write_text", full)
    out = tmp_path / "out"
    _refused(capsys, ["run", str(scenario_file), "--out", str(out)], "--out", "No space left on device")
    assert not (out / "report.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".")] if out.exists() else True


@pytest.mark.parametrize(
    ("make", "expect"),
    [
        (lambda d: Path("/dev/zero"), "a device or socket, not a regular file"),
        (lambda d: d, "is a folder, not a file"),
        (lambda d: d / "a-file" / "s.yaml", "a component of the path is a file"),
        (lambda d: d / ("s" * 300 + ".yaml"), "File name too long"),
        (lambda d: d / "loop", "Too many levels of symbolic links"),
        (lambda d: d / "fifo", "named pipe (FIFO)"),  # open() would block for ever
        (lambda d: d / "huge.yaml", "at most 2,097,152"),  # a 50 MB scenario parsed for minutes
        (lambda d: d / "latin1.yaml", "not UTF-8"),
    ],
)
def test_scenario_files_that_cannot_be_read(make, expect, tmp_path, capsys):
    (tmp_path / "a-file").write_text("x: 1\n")
    (tmp_path / "loop").symlink_to(tmp_path / "loop2")
    (tmp_path / "loop2").symlink_to(tmp_path / "loop")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "huge.yaml").write_text("# " + "x" * (3 * 1024 * 1024) + "\n")
    (tmp_path / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    path = make(tmp_path)
    _refused(capsys, ["run", str(path)], expect, str(path)[:40])


def test_a_newline_in_a_file_name_stays_on_one_line(tmp_path, capsys):
    path = tmp_path / "two\nlines.yaml"
    line = _refused(capsys, ["run", str(path)], "not found")
    assert "two\\nlines.yaml" in line


# ------------------------------------------------------------------ CLI arguments: one line, exit 2 (#12)
def exit_status(argv: list[str]) -> int:
    """``main(argv)``'s status, also when argparse exits (``SystemExit``) instead of returning."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


@pytest.mark.parametrize(
    ("argv", "expect"),
    [
        (["plan", "--budget-flops", "5e-324"], ("--budget-flops", "1e+15 to 1e+32")),
        (["plan", "--budget-flops", "1e-100"], ("--budget-flops",)),  # planned 4e-46 parameters, exit 0
        (["plan", "--budget-flops", "1e308P"], ("--budget-flops",)),  # printed Infinity in --json
        (["plan", "--budget-flops", "1e24", "--usd-per-gpu-hour", "inf"], ("--usd-per-gpu-hour", "finite")),
        (["plan", "--budget-flops", "1e24", "--mfu", "nan"], ("--mfu",)),
        (["compare", "x", "--out", "y", "--width", "inf"], ("--width", "finite")),
        (["validate", "--workers", "-1"], ("--workers", "positive")),
        (
            ["validate", "--suite", "nope"],
            ("--suite", "korthikanti-2022-layer", "nccl-busbw", "megatron-2021-a100"),
        ),
        (["run"], ("run", "scenario")),
        (["frobnicate"], ("invalid choice",)),
        (["search", "s.yaml", "--top", "9" * 5000], ("--top", "not an integer", "more characters")),
    ],
)
def test_bad_arguments_are_one_line_errors(argv, expect, capsys):
    status = exit_status(argv)
    captured = capsys.readouterr()
    assert status == 2, captured
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    for text in expect:
        assert text in captured.err, (text, captured.err)


def test_plan_json_is_strict_json(capsys):
    """No ``Infinity`` or ``NaN`` (json.loads accepts them; strict parsers do not)."""
    assert main(["plan", "--budget-flops", "1e32", "--json"]) == 0
    text = capsys.readouterr().out

    def refuse(name: str) -> float:
        raise AssertionError(f"{name} in --json output")

    json.loads(text, parse_constant=refuse)


def test_batch_on_dask_without_dask_is_one_line(write_scenario, tmp_path, capsys, monkeypatch):
    """It was ModuleNotFoundError from an import before the guarded one. Dask is hidden here (a None in
    sys.modules makes its import fail) so that the test holds whether or not it is installed."""
    monkeypatch.setitem(sys.modules, "distributed", None)
    path = write_scenario(SCENARIO | {"network": {"model": "analytical"}}, "s")
    argv = [
        "batch",
        str(path),
        "--out",
        str(tmp_path / "out"),
        "--scheduler",
        "tcp://127.0.0.1:9",
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "dask[distributed]" in err and "--scheduler" in err, err


# ----------------------------------------------------------------------------------- bounded work (#12)
def test_dry_run_prints_the_estimate_without_simulating(scenario_file, capsys, no_simulation):
    assert main(["run", str(scenario_file), "--dry-run", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["simulated_ranks"] >= 1 and doc["ops"] > 0
    assert doc["gpus"] == 8 and doc["graph_nodes"] > 8 and doc["flows_per_phase"] == 8


def test_a_step_past_the_engine_limit_is_refused_before_it_starts(scenario_file, capsys):
    """10^7 micro-batches would build programs for hours; it is refused in the estimate."""
    line = _refused(capsys, ["run", str(scenario_file), "--set", "training.global_batch=16777216", "--json"])
    assert "training.global_batch" in line and "layer passes" in line and "--dry-run" in line


def test_validate_help_names_every_suite(capsys):
    """``validate --help`` is written by hand (it must not read the suites file for speed); it must still name
    every suite the command accepts, so a new suite cannot be left out of it."""
    from simulator.validation.command import SPECIAL_SUITES
    from simulator.validation.suites import suite_specs

    text = _help(capsys, ["validate", "--help"]).replace(" ", "")  # argparse wraps at hyphens
    for name in [*suite_specs(), *SPECIAL_SUITES]:
        assert name in text
