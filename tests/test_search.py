"""``clustersim search``: the pruned space, the ranking, and the command line.

The scenario is small on purpose: an 8-layer, 2,048-wide model (0.5B parameters) with 4,096-token sequences
on two hosts of four V100 16GB, so that memory prunes part of the space (the largest micro-batches without
ZeRO need ~21 GiB) and every simulation takes a few milliseconds. Its own layout (tp 4 · pp 2 · dp 1, no
ZeRO) is a poor one, which the search must beat.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from batch_fakes import attempt_or_die, fast_batch_or_die

import simulator.commands.search as search_command_module
import simulator.planning.search as search_module
from simulator.batch.executors.base import WorkersLost
from simulator.cli import main
from simulator.errors import InfeasibleConfig
from simulator.planning.search import SearchOptions, SearchResult, run_search
from simulator.planning.search_space import (
    Layout,
    build_space,
    lighter_or_same,
    memory_or_reason,
    practitioner_order,
    space_context,
    with_layout,
)
from simulator.scenario import Scenario, load_scenario, scenario_from_dict
from simulator.simulate import simulate
from simulator.topology.loader import build_cluster

MODEL = {"layers": 8, "hidden": 2048, "heads": 16, "vocab": 32000}
GPUS = 8
V100_HBM_GIB = 16.0  # V100 SXM2 16GB (NVIDIA datasheet): the catalog's addressable 16 GiB
RULES = {"divisibility", "equivalent", "invalid", "memory", "dominated"}


def v100_doc(make_doc: Any, **kw: Any) -> dict[str, Any]:
    """The test scenario: 2 hosts × 4 V100 16GB, fp16 (V100 has no bf16), global batch 32 of 4,096 tokens."""
    doc = make_doc(gpus_per_host=4, nodes=2, model=MODEL, tp=4, pp=2, seq_len=4096, zero=0, **kw)
    doc["cluster"]["topology"]["host"]["gpu"] = "v100-sxm2-16gb"
    doc["training"].update(precision="fp16", global_batch=32, micro_batch=1)
    return doc


@pytest.fixture(scope="module")
def scenario(make_doc: Any) -> Scenario:
    """The test scenario, resolved."""
    return scenario_from_dict(v100_doc(make_doc))


@pytest.fixture(scope="module")
def searched(scenario: Scenario) -> SearchResult:
    """One search of the test scenario: 40 layouts on the analytical model, the best 8 on the flow model."""
    return run_search(scenario, SearchOptions(top=4, max_points=40, workers=1))


def simulate_layout(scenario: Scenario, lay: Layout, network: str = "analytical") -> Any:
    """The report of ``lay``, or the exception the simulator raises for it."""
    try:
        return simulate(with_layout(scenario, lay, network=network)).report
    except InfeasibleConfig as e:
        return e


# ------------------------------------------------------------------------------------------ ranking
def test_ranked_layouts_are_feasible_and_fit(searched: SearchResult) -> None:
    assert len(searched.ranked) >= searched.options.top
    for ev in searched.ranked:
        r = ev.report
        assert r.fits_memory and r.memory_gib_per_gpu.total <= V100_HBM_GIB
        lay = r.layout
        assert lay is not None
        assert MODEL["heads"] % lay.tp == 0 and MODEL["layers"] % lay.pp == 0
        assert lay.tp * lay.pp * lay.dp == GPUS
        assert 32 % (lay.dp * lay.micro_batch) == 0
        if lay.schedule == "interleaved":
            assert lay.pp > 1 and MODEL["layers"] % (lay.pp * lay.virtual_stages) == 0
            assert lay.micro_batches % lay.pp == 0


def test_ranked_by_throughput_the_refined_first(searched: SearchResult) -> None:
    """The re-simulated layouts (flow model) lead, best first; the analytical-only ones follow, best first."""
    refined = [e for e in searched.ranked if e.network == "flow"]
    fast = [e for e in searched.ranked if e.network == "analytical"]
    assert [*refined, *fast] == list(searched.ranked)
    assert len(refined) >= 2 * searched.options.top  # REFINE_FACTOR × top, plus the scenario's own
    for group in (refined, fast):
        speeds = [e.report.tokens_per_s for e in group]
        assert speeds == sorted(speeds, reverse=True)


def test_best_is_at_least_as_fast_as_the_scenarios_own_layout(
    scenario: Scenario, searched: SearchResult
) -> None:
    own = simulate(scenario).report  # independently of the search
    best = searched.best.report
    assert best.tokens_per_s >= own.tokens_per_s
    assert best.step_time_s < own.step_time_s  # tp 4 · pp 2 · dp 1 is a poor layout for a 0.5B model
    assert searched.own is not None and searched.own.own
    assert searched.own.report.step_time_s == pytest.approx(own.step_time_s, rel=1e-12)
    assert sum(e.own for e in searched.ranked) == 1


def test_every_point_is_accounted_for(searched: SearchResult) -> None:
    space = searched.space
    assert space.size == len(space.pruned) + len(space.capped) + len(space.candidates)
    assert len(space.candidates) == 40 and space.capped
    assert {p.rule for p in space.pruned} <= RULES
    assert all(p.reason for p in space.pruned)
    counts = Counter(p.rule for p in space.pruned)
    for rule in ("divisibility", "equivalent", "memory", "dominated"):
        assert counts[rule] > 0, rule


# --------------------------------------------------------------------------------------------- pruning
def test_pruned_layouts_really_cannot_run_or_fit(scenario: Scenario, searched: SearchResult) -> None:
    """The simulator agrees with each pruning rule on samples: divisibility → InfeasibleConfig, memory →
    a report that does not fit (the estimate is the report's own)."""
    by_rule: dict[str, list[Layout]] = {}
    for p in searched.space.pruned:
        by_rule.setdefault(p.rule, []).append(p.layout)
    samples = by_rule["divisibility"][::500]
    assert len(samples) >= 5
    for lay in samples:
        assert isinstance(simulate_layout(scenario, lay), InfeasibleConfig), lay.label
    for lay in by_rule["memory"][:4]:
        report = simulate_layout(scenario, lay)
        assert not report.fits_memory, lay.label
        assert report.memory_gib_per_gpu.total > V100_HBM_GIB


def test_a_dominated_layout_is_never_faster_than_its_lighter_twin(
    scenario: Scenario, searched: SearchResult
) -> None:
    """Recompute none < selective < full and ZeRO 1 < 2 < 3 only save memory: a pruned heavier twin is not
    faster than the lighter one that fits, for a sample of recompute and of ZeRO pairs."""
    fitting = list(searched.space.memory_bytes)
    samples: dict[str, list[tuple[Layout, Layout]]] = {"zero": [], "recompute": []}
    for p in searched.space.pruned:
        if p.rule != "dominated":
            continue
        lighter = next(a for a in fitting if a != p.layout and lighter_or_same(a, p.layout))
        samples["zero" if lighter.zero != p.layout.zero else "recompute"].append((p.layout, lighter))
    for kind, pairs in samples.items():
        assert len(pairs) >= 3, kind
        for heavy, light in pairs[:: max(1, len(pairs) // 3)][:3]:
            slow, fast = simulate_layout(scenario, heavy), simulate_layout(scenario, light)
            assert slow.step_time_s >= fast.step_time_s * (1 - 1e-9), (heavy.label, light.label)


def test_invalid_layouts_are_pruned_by_the_simulators_own_checks(make_doc: Any) -> None:
    """ffn_hidden 1,026 splits over tp 2 but not tp 4: Setup's tensor-parallel check prunes tp 4."""
    model = {"layers": 4, "hidden": 256, "heads": 8, "vocab": 1024, "ffn_hidden": 1026}
    s = scenario_from_dict(make_doc(gpus_per_host=4, model=model, micro_batches=8))
    space = build_space(s, build_cluster(s.topology, file=s.topology_file), max_points=10)
    invalid = [p for p in space.pruned if p.rule == "invalid"]
    assert invalid and all(p.layout.tp == 4 and "ffn_hidden=1026" in p.reason for p in invalid)
    assert all(lay.tp != 4 for lay in space.candidates)


def test_moe_layouts_search_expert_parallelism_folded_over_the_stage(make_doc: Any) -> None:
    """A mixture-of-experts model adds ep (divisors of the experts), etp (tp or 1) and the dispatcher (all-to-all
    or flex) to the axes, and the
    folded grid's rule (ep·etp | tp·cp·dp, issue #9's MoE parallel folding) decides what splits: on 4 GPUs tp 2 · dp 2
    holds ep 4 with etp 1, never with etp = tp. Each point runs as labelled (the report's ep and etp)."""
    model = {"layers": 4, "hidden": 512, "heads": 8, "vocab": 1024, "gated_mlp": True,
             "moe": {"experts": 8, "top_k": 2, "expert_ffn_hidden": 256}}  # fmt: skip
    s = scenario_from_dict(make_doc(gpus_per_host=4, model=model, micro_batches=8))
    cluster = build_cluster(s.topology, file=s.topology_file)
    space = build_space(s, cluster, max_points=1000)
    every = [*space.candidates, *space.capped, *(p.layout for p in space.pruned)]
    assert {lay.ep for lay in every} == {d for d in (1, 2, 4, 8) if d <= cluster.num_gpus}
    assert {lay.etp for lay in every} == {None, 1} and {lay.dispatcher for lay in every} == {None, "deepep"}
    assert all(lay.ep > 1 for lay in space.candidates if lay.dispatcher is not None)  # ep 1 moves no tokens
    folded = [lay for lay in space.candidates if lay.ep > lay.dp]  # the expert group spans tensor ranks too
    assert folded and all(lay.etp == 1 for lay in folded)
    broken = [p for p in space.pruned if p.rule == "divisibility" and p.reason.startswith("ep·etp")]
    assert broken and all((p.layout.tp * p.layout.dp) % (p.layout.ep * p.layout.expert_tp) for p in broken)
    lay = folded[0]
    report = simulate_layout(s, lay)
    assert (report.layout.ep, report.layout.etp) == (lay.ep, lay.expert_tp)
    assert Layout.of_report(report.layout) == lay and f"ep{lay.ep} etp1" in lay.label
    flex = next(lay for lay in space.candidates if lay.dispatcher == "deepep")
    assert simulate_layout(s, flex).layout.moe_dispatcher == "deepep" and flex.label.endswith(" deepep")
    # the space checks memory once for both dispatchers: the estimate does not depend on it
    twin = dataclasses.replace(flex, dispatcher=None)
    assert memory_or_reason(s, cluster, flex) == memory_or_reason(s, cluster, twin)


def test_the_cap_keeps_the_own_layout_and_spreads_over_tp_pp_pairs(scenario: Scenario) -> None:
    cluster = build_cluster(scenario.topology, file=scenario.topology_file)
    space = build_space(scenario, cluster, max_points=6)
    ctx = space_context(scenario, cluster)
    assert ctx.own is not None and space.candidates[0] == ctx.own
    assert len(space.candidates) == 6 and len(space.capped) == len(space.memory_bytes) - 6 - sum(
        p.rule == "dominated" for p in space.pruned
    )
    ordered = practitioner_order(list(space.candidates) + list(space.capped), ctx)
    pairs = {(lay.tp, lay.pp) for lay in ordered}
    assert len({(lay.tp, lay.pp) for lay in ordered[: len(pairs)]}) == len(pairs)  # round-robin


def test_an_own_layout_outside_the_axes_competes_as_given(make_doc: Any) -> None:
    """Uneven pipeline stages (pp_layers 3 + 5) are not searched; the scenario as given is still ranked."""
    doc = v100_doc(make_doc, parallelism__pp_layers=[3, 5])
    result = run_search(scenario_from_dict(doc), SearchOptions(top=1, max_points=4, workers=1))
    assert result.own is not None and result.own.layout is None
    assert "(as given)" in result.own.label
    assert result.own in result.ranked
    assert result.best.report.tokens_per_s >= result.own.report.tokens_per_s


def test_worker_processes_give_the_same_ranking(scenario: Scenario) -> None:
    one = run_search(scenario, SearchOptions(top=2, max_points=6, workers=1))
    two = run_search(scenario, SearchOptions(top=2, max_points=6, workers=2))
    assert [e.label for e in one.ranked] == [e.label for e in two.ranked]
    assert [e.report.step_time_s for e in one.ranked] == [e.report.step_time_s for e in two.ranked]


def test_a_killed_worker_is_rerun_in_this_process(scenario_file: Path, monkeypatch: Any, capsys: Any) -> None:
    """Issue #10, point 3: a worker killed mid-search (out of memory on a loaded machine) ended ``clustersim
    search`` with a ``WorkersLost`` traceback. Every worker here dies on its first layout; the search says so
    in one line, runs them in this process and ranks every layout exactly as with one process."""
    argv = ["search", str(scenario_file), "--top", "2", "--max-points", "6", "--json"]
    assert main([*argv, "--workers", "1"]) == 0
    one = json.loads(capsys.readouterr().out)
    monkeypatch.setattr(search_module, "_attempt", attempt_or_die)
    monkeypatch.setattr(search_module, "_fast_batch", fast_batch_or_die)
    assert main([*argv, "--workers", "2"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "worker process died" in err and "in this process" in err, err
    two = json.loads(out)
    assert [(r["label"], r["step_time_s"]) for r in two["results"]] == [
        (r["label"], r["step_time_s"]) for r in one["results"]
    ]


def test_a_lost_pool_is_one_line_with_exit_3_never_a_traceback(
    scenario_file: Path, monkeypatch: Any, capsys: Any
) -> None:
    """Where a pool's loss does reach the command line, the user reads one line and the status is 3."""

    def lost(*_: Any, **__: Any) -> Any:
        raise WorkersLost("a worker process died abruptly (out of memory? a crash?)")

    monkeypatch.setattr(search_command_module, "run_search", lost)
    assert main(["search", str(scenario_file), "--workers", "2"]) == 3
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("clustersim: error")]
    assert len(errors) == 1 and "worker process died" in errors[0] and "--workers 1" in errors[0]


# ----------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def scenario_file(make_doc: Any, write_scenario: Any) -> Path:
    """The test scenario as a file."""
    return write_scenario(v100_doc(make_doc), "v100")


def search_json(capsys: Any, *argv: str) -> dict[str, Any]:
    """``clustersim search ... --json``: the one JSON object it prints."""
    assert main(["search", *argv, "--workers", "1", "--json"]) == 0
    out = capsys.readouterr().out
    assert out.endswith("\n") and out.count("\n") == 1
    return json.loads(out)


def read_csv(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file."""
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_search_json_out_and_best_yaml(scenario_file: Path, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "out"
    doc = search_json(capsys, str(scenario_file), "--top", "3", "--max-points", "12", "--out", str(out))
    c = doc["counts"]
    assert c["space"] == c["pruned"] + c["capped"] + c["simulated"] and c["simulated"] == 12
    assert sum(doc["pruned_by_rule"].values()) == c["pruned"]
    speeds = [r["tokens_per_s"] for r in doc["results"]]
    assert len(speeds) == 3 and speeds == sorted(speeds, reverse=True)
    assert doc["own"]["own"] and doc["own"]["tokens_per_s"] <= speeds[0]
    rows = read_csv(out / "results.csv")
    assert len(rows) == c["ranked"] and rows[0]["label"] == doc["results"][0]["label"]
    pruned = read_csv(out / "pruned.csv")
    assert len(pruned) == c["pruned"] + c["capped"] + c["infeasible"]
    assert all(row["reason"] for row in pruned)
    best = simulate(load_scenario(out / "best.yaml")).report
    assert best.step_time_s == pytest.approx(doc["results"][0]["step_time_s"], rel=1e-9)
    rerun = main(["run", str(scenario_file), *(f"--set={s}" for s in doc["best_overrides"]), "--json"])
    assert rerun == 0
    assert json.loads(capsys.readouterr().out)["step_time_s"] == pytest.approx(best.step_time_s, rel=1e-9)


def test_search_by_cost_ranks_by_dollars_per_token(scenario_file: Path, capsys: Any) -> None:
    doc = search_json(capsys, str(scenario_file), "--top", "3", "--max-points", "8", "--objective", "cost")
    usd = [r["usd_per_million_tokens"] for r in doc["results"]]
    assert usd == sorted(usd) and usd[0] > 0
    gpus, price = doc["gpus"], 2.5  # the scenario's default cost.usd_per_gpu_hour
    first = doc["results"][0]
    assert first["usd_per_million_tokens"] == pytest.approx(price * gpus / 3600 / first["tokens_per_s"] * 1e6)


def test_search_prints_a_ranked_table(scenario_file: Path, capsys: Any) -> None:
    assert main(["search", str(scenario_file), "--top", "2", "--max-points", "6", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    for text in ("tokens/s", "GiB/GPU", "pruned (divisibility", "simulated on the analytical model",
                 "scenario's own layout", "run the best: clustersim run"):  # fmt: skip
        assert text in out, text


@pytest.mark.parametrize(
    "argv",
    [
        ["--top", "0"],
        ["--max-points", "-1"],
        ["--objective", "speed"],
        ["--workers", "0"],
        ["--set", "parallelism.nonsense=1"],
        ["--set", "model.hidden=16384", "--set", "model.heads=128"],  # 26B parameters: nothing fits 8 × 16 GB
    ],
)
def test_bad_input_exits_2(scenario_file: Path, capsys: Any, argv: list[str]) -> None:
    try:
        code = main(["search", str(scenario_file), "--workers", "1", *argv])
    except SystemExit as e:  # argparse
        code = int(e.code or 0)
    assert code == 2
    # the error is one line; progress lines ("clustersim search [0.1 s]: ...") may come before it
    err = "".join(
        line
        for line in capsys.readouterr().err.splitlines(True)
        if not line.startswith("clustersim search [")
    )
    assert err.count("\n") <= 1 or err.startswith("usage:")


def test_missing_scenario_exits_2(tmp_path: Path, capsys: Any) -> None:
    assert main(["search", str(tmp_path / "nope.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
