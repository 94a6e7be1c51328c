"""Conventions and warnings of issue #10 (points 8 and 9): shipped scenarios by bare name, help texts that
name files which exist, the layout line, and the warning for tensor parallelism leaving the NVLink domain."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from simulator.build.setup import Setup
from simulator.cli import build_parser, main
from simulator.report.table import layout_line
from simulator.report.warnings import tp_domain_warning
from simulator.scenario import load_scenario, scenario_from_dict
from simulator.topology.loader import build_cluster

ROOT = Path(__file__).resolve().parents[1]


def test_a_shipped_scenario_runs_by_its_bare_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no file of that name here: the shipped one
    assert load_scenario("quickstart").name == load_scenario(ROOT / "scenarios/quickstart.yaml").name
    assert load_scenario("quickstart.yaml").file == load_scenario("quickstart").file
    (tmp_path / "quickstart.yaml").write_text((ROOT / "scenarios/quickstart.yaml").read_text().replace(
        "name: quickstart-llama3-8b-16xh100", "name: my-own").replace("../topologies/dgx-h100.yaml", "dgx-h100"))  # fmt: skip
    assert load_scenario("quickstart.yaml").name == "my-own"  # a local file of that name wins


def test_an_unknown_bare_name_lists_the_shipped_scenarios(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["run", "no-such-scenario"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no shipped scenario of that name" in err and "quickstart" in err
    assert main(["run", "sub/quickstart.yaml"]) == 2  # a path never falls back on a shipped file
    assert "quickstart" in capsys.readouterr().err


def test_every_file_a_help_text_names_exists() -> None:
    parser = build_parser()
    texts = [parser.format_help()]
    for action in parser._subparsers._group_actions:  # type: ignore[union-attr]
        texts += [sub.format_help() for sub in action.choices.values()]
    named = set(re.findall(r"(?:scenarios|topologies)/[\w./-]+\.yaml", "\n".join(texts)))
    assert named, "the help texts name no example file"
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert missing == [], f"help names files that do not exist: {missing}"


def _setup(make_doc: Any, **kw: Any) -> Setup:
    scenario = scenario_from_dict(make_doc(**kw))
    return Setup(scenario, build_cluster(scenario.topology, file=scenario.topology_file), "symmetric", None)


def test_tensor_parallelism_across_hosts_is_warned(make_doc: Any) -> None:
    inside = _setup(make_doc, nodes=2, tp=8)
    assert tp_domain_warning(inside.cluster, inside.plan) is None
    model = {"layers": 4, "hidden": 256, "heads": 16, "vocab": 1024}  # heads divisible by tp 16
    across = _setup(make_doc, nodes=2, tp=16, model=model)
    warning = tp_domain_warning(across.cluster, across.plan)
    assert warning is not None
    assert "tp 16 > 8 GPUs per NVLink domain" in warning and "span 2 hosts" in warning and "ib-hdr" in warning
    from simulator.simulate import simulate

    assert warning in simulate(across.scenario).report.warnings  # the run reports it
    assert not any("NVLink domain" in w for w in simulate(inside.scenario).report.warnings)


def test_the_layout_line_says_sequence_parallel_only_when_there_is_a_tp_group() -> None:
    from test_report_outputs import make_report

    base = make_report()
    assert base.layout is not None and base.layout.sequence_parallel
    assert "sequence-parallel" in layout_line(base)
    tp1 = base.model_copy(update={"layout": base.layout.model_copy(update={"tp": 1})})
    assert "sequence-parallel" not in layout_line(tp1)
