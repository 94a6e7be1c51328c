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


# ------------------------------------------------------------------------- modern suite (issue #8)
MODERN = "modern-training-runs"


HELDOUT = "heldout-training-runs"  # issue #8's held-out check: runs of the same kinds in no other data file


def _cases(suite: str = MODERN) -> list[dict]:
    from simulator.validation.suites import _data, suite_specs

    return _data(suite_specs()[suite]["data"])["cases"]


def _modern_cases() -> list[dict]:
    return _cases(MODERN)


@pytest.mark.parametrize(("suite", "count"), [(MODERN, 40), (HELDOUT, 20)])
def test_suite_has_one_faithful_scenario_per_published_run(suite, count):
    """Every case of modern-training-runs.yaml (and of the held-out file) has a shipped scenario with the published
    layout, batch, sequence, precision and GPU count, and a header naming its source and the choices for what the
    source left open."""
    from simulator.validation.suites import scenario_path, suite_specs

    cases = _cases(suite)
    rows = list(suite_rows([suite]))
    assert len(rows) == len(cases) == count
    entries = suite_specs()[suite]["rows"]
    assert sorted(e["run"] for e in entries) == list(range(count))
    for (row, sc), entry in zip(rows, entries, strict=True):
        case = cases[entry["run"]]
        assert row.name == case["id"] and row.measured_s == case["measured"]["step_time_s"]
        p, t, par = dict(case["parallelism"]), dict(case["training"]), sc.parallelism
        header = scenario_path(entry["scenario"]).read_text().split("\nname:")[0]
        sections = {"parallelism": p, "training": t}
        for key, value in entry.get("as_run", {}).items():  # a documented misprint: the run's value, not the row's
            section, field = key.split(".")
            assert value != sections[section][field] and "as_run" in header, (row.name, key)
            sections[section][field] = value
        assert (par.tp, par.pp, par.dp, par.cp, par.ep, par.zero) == (p["tp"], p["pp"], p["dp"], p["cp"], p["ep"],
                                                                      p["zero"]), row.name  # fmt: skip
        assert (par.sequence_parallel, par.virtual_stages) == (p["sequence_parallel"], p["virtual_stages"]), row.name
        tr = sc.training
        assert (tr.seq_len, tr.global_batch, tr.micro_batch, tr.precision) == (
            t["seq_len"], t["global_batch"], t["micro_batch"], t["precision"]), row.name  # fmt: skip
        assert tr.recompute == t.get("recompute", tr.recompute), row.name
        assert tr.precision != "fp8" or tr.fp8_recipe is not None, row.name
        host = sc.topology["host"]
        assert sc.topology["nodes"] * host["gpus"] == case["gpus"], row.name
        assert row.gpu == {"b200": "b200", "gb200": "gb200", "h100": host["gpu"]}[case["hw"]], row.name
        m = case["model"]
        assert (sc.model.layers, sc.model.hidden, sc.model.heads) == (m["layers"], m["hidden"], m["heads"]), row.name
        assert sc.model.vocab >= m["vocab"] and sc.model.gated_mlp == m["gated_mlp"], row.name
        assert (sc.model.moe is None) == ("moe" not in m), row.name
        if sc.model.moe is not None:
            assert sc.model.moe.expert_ffn_hidden == m["moe"]["expert_ffn_hidden"], row.name
        assert case["id"] in header and "Source:" in header and "Choices" in header, row.name


def test_modern_rows_are_classified():
    from collections import Counter

    kinds = Counter(row.classes[0] for row, _ in suite_rows([MODERN]))
    assert kinds == {"moe": 6, "long-context": 3, "dense-fp8": 20, "dense-bf16": 11}
    gpus = Counter(row.gpu for row, _ in suite_rows([MODERN]))
    assert gpus == {"h100-sxm": 27, "h100-96gb-hbm2e": 7, "b200": 6}


def test_heldout_rows_are_classified():
    """The held-out suite spans the modern suite's kinds and adds GB200 (issue #8: H100, B200, GB200)."""
    from collections import Counter

    rows = list(suite_rows([HELDOUT]))
    assert {row.role for row, _ in rows} == {"held-out"}
    assert Counter(row.classes[0] for row, _ in rows) == {"moe": 7, "long-context": 3, "dense-fp8": 7, "dense-bf16": 3}
    assert Counter(row.gpu for row, _ in rows) == {"h100-sxm": 9, "h100-96gb-hbm2e": 4, "b200": 3, "gb200": 4}
    frameworks = Counter(row.classes[2] for row, _ in rows)
    assert frameworks == {"framework:megatron-core": 12, "framework:torchtitan": 4, "framework:llm-foundry": 4}


def test_heldout_runs_are_in_no_other_data_file():
    """Held out means unseen: no case id, printed row or (system, layout, measurement) of the held-out file appears in
    any other validation data file, and ../shared/ is copied only as modern-training-runs.yaml."""
    from importlib import resources

    from simulator.validation.suites import suite_specs

    def key(c: dict) -> tuple:
        p, t = c["parallelism"], c["training"]
        return (c["hw"], c["gpus"], c["model"]["layers"], c["model"]["hidden"], t["seq_len"], t["global_batch"],
                t["micro_batch"], p["tp"], p["pp"], p["cp"], p["ep"], p["virtual_stages"],
                c["measured"]["tokens_per_s_per_gpu"])  # fmt: skip

    held = _cases(HELDOUT)
    data = resources.files("simulator.validation").joinpath("data")
    others = {f.name: f.read_text() for f in data.iterdir() if f.name.endswith(".yaml") and f.name != suite_specs()[
        HELDOUT]["data"]}  # fmt: skip
    for case in held:
        for name, text in others.items():
            assert case["id"] not in text and case["source_row"] not in text, (case["id"], name)
    assert not {key(c) for c in held} & {key(c) for c in _modern_cases()}


def test_every_heldout_row_builds():
    """Every held-out row's scenario builds into programs on its cluster (layout feasible, memory computed),
    without simulating the step: `clustersim validate --suite heldout-training-runs` runs them (about two
    minutes on two cores, too long for this suite); its classes are the ones the data file implies."""
    from collections import Counter

    from simulator.build.program_builder import ProgramFactory
    from simulator.build.setup import Setup, peak_memory
    from simulator.topology.loader import build_cluster

    rows = list(suite_rows([HELDOUT]))
    assert [r.name for r, _ in rows] == [c["id"] for c in _cases(HELDOUT)]
    for row, sc in rows:
        setup = Setup(sc, build_cluster(sc.topology, file=sc.topology_file), "symmetric")
        assert setup.dims.world == row.gpus, row.name
        assert peak_memory(setup).total > 0, row.name
        assert ProgramFactory(setup.workload, setup.inline_comm).build(0).ops, row.name
    kinds = Counter(c for r, _ in rows for c in r.classes)
    assert [kinds[k] for k in ("dense-bf16", "dense-fp8", "long-context", "moe")] == [3, 7, 3, 7]
    assert kinds["gpu:gb200"] == 4


def test_a_rejected_layout_is_a_row_that_does_not_run_with_its_reason():
    """A row whose scenario the simulator rejects stays in the table, marked, with the reason: here the
    published Qwen3-235B layout (EP 32 folded over TP 2 x DP 16) with its experts split over TP instead."""
    from simulator.scenario import load_scenario
    from simulator.validation.suites import evaluate

    row, sc = next((r, s) for r, s in suite_rows([MODERN]) if r.name == "mbridge2511-h100-qwen3-235b-256")
    result = evaluate(row, load_scenario(sc.file, ["parallelism.etp=2"]))
    assert not result.runs and not result.ok and "ep·etp=32·2" in result.failure
    assert result.gpus == 256
    doc = command._as_dict(result)
    assert doc["predicted_s"] is None and doc["error"] is None and doc["runs"] is False
    assert "1 do not run" in command._summary([doc])


def test_memory_failures_are_counted():
    rows = [{"suite": "s", "run": "a", "error": 0.01, "within": True, "fits_memory": False, "ok": False},
            {"suite": "s", "run": "b", "error": -0.02, "within": True, "fits_memory": True, "ok": True}]  # fmt: skip
    assert "0 outside tolerance; 1 memory failure " in command._summary(rows)


def test_validate_by_class_prints_classes_memory_and_every_row(capsys):
    rc = main(["validate", "--suite", MODERN, "--class", "long-context", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert rc == (0 if all(r["ok"] for r in doc["rows"]) else 1)  # 1 exactly when a row fails
    assert [r["run"] for r in doc["rows"]] == [
        "torchtitan-8b-fsdp8-cp1-32k", "torchtitan-8b-fsdp1-cp8-256k", "llmfoundry-mpt13b-h100-8-32k"]  # fmt: skip
    assert all(r["memory_gib"] > 0 and r["capacity_gib"] > 0 for r in doc["rows"])
    by = {c["class"]: c for c in doc["classes"]}
    assert by["long-context"]["rows"] == 3 and by["long-context"]["max_abs_error"] is not None
    assert "memory failure" in doc["summary"]
    (suite,) = doc["suites"]  # one suite ran: its figures are those of its rows
    errs = sorted(abs(r["error"]) for r in doc["rows"])
    assert suite["suite"] == MODERN and suite["rows"] == 3 and suite["max_abs_error"] == pytest.approx(errs[-1])
    assert suite["median_abs_error"] == pytest.approx(errs[1])
    # piped (not a terminal): complete rows, no run name cut
    assert main(["validate", "--suite", MODERN, "--class", "long-context"]) == rc
    out = capsys.readouterr().out
    assert "torchtitan-8b-fsdp1-cp8-256k" in out and "by class" in out and "by suite" in out and "fits memory" in out


def test_unknown_class_is_a_user_error(capsys):
    assert main(["validate", "--suite", MODERN, "--class", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown class 'nope'" in err and "dense-fp8" in err


@pytest.mark.parametrize(
    ("section", "value", "message"),
    [
        ("training", {"precision": "bf16", "fp8_recipe": "mxfp8"}, "fp8_recipe needs precision fp8"),
        ("training", {"recompute": "full", "selective_recompute": "op_level"}, "selective_recompute needs recompute"),
        ("training", {"recompute": "none", "recompute_modules": ["mlp"]}, "recompute_modules needs recompute"),
        ("framework", {"name": "megatron-core", "compile": True}, "compile: true needs"),
        ("framework", {"cuda_graph_scope": ["full_iteration", "attn"]}, "full_iteration already captures"),
        ("model", {"activation": "swiglu", "gated_mlp": False}, "swiglu needs gated_mlp"),
        ("model", {"mla": {"q_lora_rank": 1, "kv_lora_rank": 1, "qk_nope_head_dim": 1, "qk_rope_head_dim": 1,
                           "v_head_dim": 1}, "kv_heads": 1}, "leave kv_heads out"),  # fmt: skip
    ],
)
def test_new_scenario_fields_reject_contradictions_in_one_line(section, value, message):
    """The fields the modern runs need (issue #8 step 1) are validated, each error one line naming the field."""
    from simulator.errors import ScenarioError
    from simulator.scenario import scenario_from_dict

    doc = {"model": {"layers": 2, "hidden": 64, "heads": 4, "vocab": 128}, "cluster": "dgx-h100",
           "training": {"seq_len": 128, "global_batch": 8}}  # fmt: skip
    doc[section] = {**doc.get(section, {}), **value}
    with pytest.raises(ScenarioError) as err:
        scenario_from_dict(doc)
    assert message in str(err.value) and "\n" not in str(err.value)
