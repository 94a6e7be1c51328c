"""Bad input through ``clustersim run``: every malformed scenario gives exit status 2 and exactly one line on
stderr, ``clustersim: error: FILE: FIELD: reason (got VALUE)``, with no traceback, nothing on stdout and
nothing written to ``--out`` (issue #2, "Bad input"; docs/design.md, "CLI")."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulator.cli import main

REPO = Path(__file__).resolve().parents[1]

# gpt3-350m: 24 layers, hidden 1024, 16 heads. dgx-a100 is a shipped topology (8 A100 80GB per node).
BASE: dict[str, Any] = {
    "model": "gpt3-350m",
    "cluster": {"topology": "dgx-a100", "nodes": 1},
    "training": {"seq_len": 512, "global_batch": 8, "micro_batch": 1},
    "parallelism": {"tp": 2, "pp": 2},
}

NO_FILE_IN_SIMULATE = (
    "errors raised while simulating (InfeasibleConfig from simulate.py and the strategies, the GPU's "
    "precision check) carry no file, and cli.main / commands/run.py print them without the scenario's "
    "path; fix: attach args.scenario to a UserInputError whose file is None before printing"
)


@dataclass(frozen=True)
class Case:
    """A malformed input and what its error line must contain (besides ``clustersim: error:``)."""

    make: Callable[[dict[str, Any]], dict[str, Any] | list[Any] | str | None]  # None: no file at all
    expect: tuple[str, ...]  # substrings: the field, the bad value, the reason
    argv: tuple[str, ...] = ()
    names_file: bool = True
    xfail: str = ""  # reason, for a known bug outside scenario.py


def edit(section: str | None, **changes: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A copy of the base scenario with ``changes`` applied at the top level or in ``section``."""

    def make(base: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(base)
        target = doc if section is None else doc[section]
        for key, value in changes.items():
            if value is DELETE:
                del target[key]
            else:
                target[key] = value
        return doc

    return make


DELETE = object()


def both(*edits: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Several edits in a row."""

    def make(base: dict[str, Any]) -> dict[str, Any]:
        doc = base
        for e in edits:
            doc = e(doc)
        return doc

    return make


CASES: dict[str, Case] = {
    "missing training.seq_len": Case(edit("training", seq_len=DELETE), ("training.seq_len", "missing")),
    "missing training section": Case(edit(None, training=DELETE), ("training", "missing")),
    "negative global_batch": Case(edit("training", global_batch=-4), ("training.global_batch", "-4")),
    "zero micro_batch": Case(edit("training", micro_batch=0), ("training.micro_batch", "0")),
    "unknown model name": Case(edit(None, model="gpt-9000"), ("model", "'gpt-9000'", "gpt3-350m")),
    "unknown top-level key": Case(edit(None, optimiser="adam"), ("optimiser", "unknown key")),
    "unknown nested key": Case(
        edit("parallelism", tensor_parallel=2), ("parallelism.tensor_parallel", "unknown key")
    ),
    "unknown key in an inline model": Case(
        edit(None, model={"layers": 2, "hidden": 64, "heads": 4, "vocab": 100, "colour": "red"}),
        ("model.colour", "unknown key"),
    ),
    "heads not dividing hidden (inline model)": Case(
        edit(None, model={"layers": 2, "hidden": 100, "heads": 3, "vocab": 100}),
        ("model", "heads=3", "hidden=100"),
    ),
    "wrong type (tp: eight)": Case(edit("parallelism", tp="eight"), ("parallelism.tp", "'eight'")),
    "zero out of range": Case(edit("parallelism", zero=5), ("parallelism.zero", "5")),
    "unknown precision": Case(edit("training", precision="int4"), ("training.precision", "'int4'", "bf16")),
    "unknown schedule": Case(
        edit("parallelism", schedule="zigzag"), ("parallelism.schedule", "'zigzag'", "1f1b", "gpipe")
    ),
    "unknown network model": Case(
        edit(None, network={"model": "quantum"}), ("network.model", "'quantum'", "flow")
    ),
    "unknown collective algorithm": Case(
        edit(None, network={"algorithm": "telepathy"}), ("network.algorithm", "'telepathy'", "ring")
    ),
    "zero nodes": Case(edit("cluster", nodes=0), ("cluster.nodes", "0")),
    "unknown topology file": Case(
        edit("cluster", topology="no-such-topology.yaml"), ("cluster", "'no-such-topology.yaml'", "dgx-a100")
    ),
    "not YAML": Case(lambda base: "model: [gpt3\n  : : {\n", ("YAML", "line 2")),
    "empty file": Case(lambda base: "", ("empty",)),
    "a YAML list": Case(lambda base: ["model", "gpt3-350m"], ("mapping",)),
    "a plain string": Case(lambda base: "just some words\n", ("mapping",)),
    "missing file": Case(lambda base: None, ("not found",)),
    "bad --set syntax": Case(
        lambda base: base, ("--set", "'parallelism.tp'", "KEY=VALUE"), ("--set", "parallelism.tp"), False
    ),
    "--set with an empty key": Case(lambda base: base, ("--set", "'=4'"), ("--set", "=4"), False),
    "--set of an unknown key": Case(
        lambda base: base, ("parallelism.tpp", "unknown key"), ("--set", "parallelism.tpp=4")
    ),
    "--set of a wrong type": Case(
        lambda base: base, ("parallelism.pp", "'two'"), ("--set", "parallelism.pp=two")
    ),
    # ---- found while simulating: the layout does not fit the model, the cluster or the batch ----
    "tp not dividing heads": Case(
        both(edit("cluster", nodes=3), edit("parallelism", tp=3, pp=1)),
        ("parallelism.tp", "tp=3", "heads=16"),
    ),
    "gpus not divisible by tp·pp": Case(edit("parallelism", tp=1, pp=3), ("parallelism", "gpus=8", "=3")),
    "global_batch not divisible by dp·micro_batch": Case(
        edit("training", global_batch=15), ("training.global_batch", "15", "dp·micro_batch")
    ),
    "fp8 on an A100": Case(edit("training", precision="fp8"), ("training.precision", "fp8", "bf16")),
    "FlashAttention-3 on an A100": Case(
        lambda base: base | {"framework": {"name": "torchtitan", "attention_impl": "fa3"}},
        ("framework.attention_impl", "fa3", "a100-sxm-80gb", "fa2"),
    ),
    "unknown attention implementation": Case(
        lambda base: base | {"framework": {"attention_impl": "fa9"}}, ("framework.attention_impl", "fa9", "fa1")
    ),
    "virtual stages without the interleaved schedule": Case(
        edit("parallelism", virtual_stages=2), ("parallelism.virtual_stages", "interleaved")
    ),
}


def _params() -> list[Any]:
    out = []
    for name, case in CASES.items():
        marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
        out.append(pytest.param(case, id=name, marks=marks))
    return out


def _write(case: Case, write_scenario: Callable[..., Path], tmp_path: Path) -> Path:
    content = case.make(copy.deepcopy(BASE))
    return tmp_path / "missing.yaml" if content is None else write_scenario(content, "bad")


def test_the_base_scenario_is_valid(write_scenario, tmp_path, capsys):
    """The scenario every case breaks runs (so each case fails for its own reason)."""
    path = write_scenario(BASE, "base")
    assert main(["run", str(path), "--json", "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == ""
    assert (tmp_path / "out" / "report.json").is_file()


@pytest.mark.parametrize("case", _params())
def test_bad_input_gives_one_line_error(case, write_scenario, tmp_path, capsys):
    """Exit 2; one stderr line naming the file and the field (and the bad value); empty stdout; no output."""
    path = _write(case, write_scenario, tmp_path)
    out_dir = tmp_path / "out"
    status = main(["run", str(path), *case.argv, "--out", str(out_dir)])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert captured.err.endswith("\n") and captured.err.count("\n") == 1, captured.err
    line = captured.err.rstrip("\n")
    assert line.startswith("clustersim: error: ")
    assert "Traceback" not in line
    if case.names_file:
        assert str(path) in line, line
    for text in case.expect:
        assert text in line, (text, line)
    assert not out_dir.exists() or not any(out_dir.iterdir())


@pytest.mark.parametrize("name", ["not YAML", "unknown nested key"])
def test_bad_input_in_a_fresh_process(name, write_scenario, tmp_path):
    """The installed entry point's behaviour: status 2 and one line, no traceback, from a new process."""
    path = _write(CASES[name], write_scenario, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "simulator.cli", "run", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("clustersim: error: ")
    assert str(path) in proc.stderr and "Traceback" not in proc.stderr


# ---- paths: a path that does not exist is an error naming it; shipped names only for a bare name (#12) ----
def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1, captured.err
    return captured.err.rstrip("\n")


@pytest.mark.parametrize(
    "ref",
    [
        "/no/such/dir/my-modified/dgx-a100.yaml",  # absolute, with a shipped file's name (issue #12)
        "../topologies/dgx-a100.yaml",  # relative, right from the repository root but not from tmp_path
        "my-modified/dgx-a100",
    ],
)
def test_a_topology_path_that_does_not_exist_is_an_error(ref, write_scenario, capsys):
    """It used to run on the shipped dgx-a100 with exit 0: a silently different cluster."""
    path = write_scenario({**BASE, "cluster": {"topology": ref, "nodes": 1}}, "scenario")
    assert main(["run", str(path), "--json"]) == 2
    line = _error_line(capsys)
    for text in (str(path), "cluster.topology", repr(ref), "not found"):
        assert text in line, (text, line)


def test_a_cluster_path_as_a_string_is_checked_the_same_way(write_scenario, capsys):
    path = write_scenario({**BASE, "cluster": "/no/such/dir/dgx-a100.yaml"}, "scenario")
    assert main(["run", str(path), "--json"]) == 2
    line = _error_line(capsys)
    assert str(path) in line and ": cluster: " in line and "'/no/such/dir/dgx-a100.yaml'" in line


@pytest.mark.parametrize("ref", ["dgx-a100", "dgx-a100.yaml"])
def test_a_bare_name_is_a_shipped_topology(ref, write_scenario, capsys):
    path = write_scenario(
        {**BASE, "cluster": {"topology": ref, "nodes": 1}, "network": {"model": "analytical"}}, "s"
    )
    assert main(["run", str(path), "--json"]) == 0
    assert '"gpus":8' in capsys.readouterr().out


def test_a_file_beside_the_scenario_wins_over_the_shipped_name(write_scenario, tmp_path, capsys):
    """A bare name is first a file in the scenario's folder (here a 2-GPU copy of dgx-a100)."""
    import yaml

    shipped = yaml.safe_load((REPO / "topologies" / "dgx-a100.yaml").read_text())
    shipped["host"] |= {"gpus": 2, "nics": 2, "pcie_switches": 1}
    (tmp_path / "dgx-a100.yaml").write_text(yaml.safe_dump(shipped))
    doc = {**BASE, "cluster": {"topology": "dgx-a100.yaml", "nodes": 1}, "network": {"model": "analytical"}}
    doc["parallelism"] = {"tp": 2, "pp": 1}
    path = write_scenario(doc, "s")
    assert main(["run", str(path), "--json"]) == 0, capsys.readouterr().err
    assert '"gpus":2' in capsys.readouterr().out


def test_a_relative_path_starts_from_the_scenario_folder(write_scenario, tmp_path, capsys, monkeypatch):
    """Not from the working directory: ``../topologies/dgx-a100.yaml`` from the repository root is no
    licence for a scenario elsewhere."""
    monkeypatch.chdir(REPO)
    path = write_scenario({**BASE, "cluster": {"topology": "topologies/dgx-a100.yaml", "nodes": 1}}, "s")
    assert main(["run", str(path), "--json"]) == 2
    assert "cluster.topology" in _error_line(capsys)


# ---- hardened inputs (#12): non-finite numbers, bounds where no real cluster goes, YAML attacks ----
HARDENING: dict[str, tuple[str, tuple[str, ...]]] = {
    # --set override -> substrings of the error line
    "inf grad_bucket_mb": ("parallelism.grad_bucket_mb=.inf", ("parallelism.grad_bucket_mb", "finite")),
    "nan grad_bucket_mb": ("parallelism.grad_bucket_mb=.nan", ("parallelism.grad_bucket_mb", "finite")),
    "inf skew": ("training.expert_load.skew=.inf", ("training.expert_load.skew", "finite")),
    "huge skew": ("training.expert_load.skew=1000000", ("training.expert_load.skew", "16")),
    "inf usd": ("cost.usd_per_gpu_hour=.inf", ("cost.usd_per_gpu_hour", "finite")),
    "inf capacity_factor": (
        "model={layers: 2, hidden: 64, heads: 4, vocab: 100, moe: {experts: 4, top_k: 1, capacity_factor: .inf}}",
        ("model.moe.capacity_factor", "finite"),
    ),
    "inf link_gbps": (
        "cluster.overrides.fabric={builder: single_switch, link_gbps: .inf}",
        ("link_gbps", "finite"),
    ),
    "nan nvlink in a host": (
        "cluster.overrides.host={builder: nvswitch, gpu: a100-sxm-80gb, gpus: 8, nvlink_gbps: .nan}",
        ("host.nvlink_gbps", "finite"),
    ),
    "10^6 nodes": ("cluster.nodes=1000000", ("cluster.nodes", "65536")),
    "10^30 GPUs per host": (
        "cluster.overrides.host={builder: nvswitch, gpu: a100-sxm-80gb, gpus: 1000000000000000000000000000000, "
        "nvlink_gbps: 300}",
        ("host.gpus", "at most"),
    ),
    "2^63-1 layers": ("model.layers=9223372036854775807", ("model.layers", "2048")),
    "huge head_dim": ("model.head_dim=10000000000", ("model.head_dim", "8192")),
    "huge seq_len": ("training.seq_len=100000000000", ("training.seq_len", "16777216")),
    "huge vocab": ("model.vocab=100000000000", ("model.vocab", "16777216")),
    "huge hidden": ("model.hidden=100000000000", ("model.hidden",)),
    "huge ffn_hidden": ("model.ffn_hidden=100000000000", ("model.ffn_hidden",)),
    "first_dense_layers past layers": (
        "model={layers: 2, hidden: 64, heads: 4, vocab: 100, moe: {experts: 4, top_k: 1, first_dense_layers: 3}}",
        ("model", "first_dense_layers=3", "layers=2"),
    ),
    "5,000-digit integer": ("training.seq_len=" + "9" * 5000, ("training.seq_len", "more characters")),
    "100 k-character value": (
        "parallelism.schedule=" + "z" * 100_000,
        ("parallelism.schedule", "more characters"),
    ),
}


@pytest.mark.parametrize("name", list(HARDENING))
def test_hardened_values_are_one_line_errors(name, write_scenario, capsys):
    override, expect = HARDENING[name]
    path = write_scenario(BASE, "s")
    assert main(["run", str(path), "--set", override, "--json"]) == 2
    line = _error_line(capsys)
    assert len(line) < 2500, len(line)  # a bounded prefix of the value, not 100 KB
    for text in expect:
        assert text in line, (text, line)


@pytest.mark.parametrize(
    ("text", "expect"),
    [
        ("model: gpt3-350m\nmodel: gpt3-125m\n", ("duplicate key 'model'", "line 2")),  # last won silently
        ("a: " + "[" * 1000 + "]" * 1000 + "\n", ("nested deeper than 64",)),  # RecursionError
        ("a: &x [1, 2]\nb: *x\n", ("aliases",)),  # billion laughs
        ("training: {seq_len: " + "9" * 5000 + "}\n", ("4,300 digits",)),  # ValueError in int()
        ("model: !!python/object/apply:os.system [echo hi]\n", ("not valid YAML",)),
    ],
)
def test_raw_yaml_attacks_are_one_line_errors(text, expect, write_scenario, capsys):
    path = write_scenario(text, "s")
    assert main(["run", str(path), "--json"]) == 2
    line = _error_line(capsys)
    assert str(path) in line
    for t in expect:
        assert t in line, (t, line)


def test_tp_comm_overlap_needs_sequence_parallelism(write_scenario, capsys):
    """Megatron asserts it (--tp-comm-overlap needs --sequence-parallel); it was silently ignored."""
    doc = {**BASE, "parallelism": {"tp": 2, "pp": 2, "tp_comm_overlap": True}}
    assert main(["run", str(write_scenario(doc, "s")), "--json"]) == 2
    assert "tp_comm_overlap" in _error_line(capsys)


def test_a_bare_name_too_long_for_the_file_system_is_an_error(write_scenario, capsys):
    """Found by tests/test_fuzz.py: the lookup of a shipped topology of that name raised ENAMETOOLONG."""
    path = write_scenario({**BASE, "cluster": "x" * 5000}, "s")
    assert main(["run", str(path), "--json"]) == 2
    line = _error_line(capsys)
    assert "cluster" in line and "not found" in line and len(line) < 2500
