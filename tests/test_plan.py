"""``clustersim plan``: Chinchilla's closed form, Young's checkpoint interval, the failure rate derived from
Llama 3, the time-and-cost arithmetic, and the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from scipy.optimize import minimize_scalar

from simulator.cli import main
from simulator.errors import InfeasibleConfig
from simulator.planning.cost import GRID_G_CO2_PER_KWH, PUE
from simulator.planning.reliability import (
    LLAMA3_DAYS,
    LLAMA3_NODES,
    LLAMA3_UNEXPECTED_INTERRUPTIONS,
    NODE_FAILURES_PER_HOUR,
    job_mtbf_s,
    reliability,
    waste_fraction,
    young_interval_s,
)
from simulator.planning.scaling import FITS, FLOPS_PER_PARAM_TOKEN, parse_quantity

GPT3_FLOPS = 3.14e23  # GPT-3 175B on 300B tokens (Brown et al. 2020, Table D.1; docs/reference.md)
CHINCHILLA_FLOPS = 5.76e23  # Gopher's budget, spent on Chinchilla (70B, 1.4T tokens; Hoffmann 2022)
BUDGETS = (1e20, GPT3_FLOPS, CHINCHILLA_FLOPS, 1e25)
A100_TDP_W = 400.0  # the test cluster's GPU (NVIDIA A100 SXM datasheet)

# gpt3-125m-like tiny model on one 8-GPU host of the shared test topology (tests/conftest.py)
TINY: dict[str, Any] = {"layers": 4, "hidden": 256, "heads": 8, "vocab": 1024}


# ------------------------------------------------------------------------------------------ Chinchilla
@pytest.mark.parametrize("fit", sorted(FITS))
@pytest.mark.parametrize("flops", BUDGETS)
def test_closed_form_satisfies_the_first_order_conditions(fit: str, flops: float) -> None:
    """On the constraint 6ND = C, and where α·A/N^α = β·B/D^β (dL/dlogN = dL/dlogD)."""
    f = FITS[fit]
    opt = f.optimum(flops)
    assert FLOPS_PER_PARAM_TOKEN * opt.params * opt.tokens == pytest.approx(flops, rel=1e-12)
    assert f.alpha * f.a / opt.params**f.alpha == pytest.approx(f.beta * f.b / opt.tokens**f.beta, rel=1e-9)
    assert opt.loss == pytest.approx(f.loss(opt.params, opt.tokens), rel=1e-15)


@pytest.mark.parametrize("fit", sorted(FITS))
@pytest.mark.parametrize("flops", BUDGETS)
def test_closed_form_is_the_numerical_minimum(fit: str, flops: float) -> None:
    f = FITS[fit]

    def loss_on_constraint(log_n: float) -> float:
        n = math.exp(log_n)
        return f.loss(n, flops / (FLOPS_PER_PARAM_TOKEN * n))

    found = minimize_scalar(loss_on_constraint, bounds=(math.log(1e6), math.log(1e14)), method="bounded",
                            options={"xatol": 1e-10})  # fmt: skip
    opt = f.optimum(flops)
    assert math.exp(found.x) == pytest.approx(opt.params, rel=1e-3)
    for k in (0.5, 0.9, 1.1, 2.0):
        assert loss_on_constraint(math.log(opt.params * k)) > opt.loss


def test_hoffmanns_exponents_as_published() -> None:
    """N_opt ∝ C^a with a = β/(α+β) = 0.452; Hoffmann et al. 2022, Table 2, approach 3: a = 0.46, b = 0.54
    (the published α, β are rounded)."""
    f = FITS["hoffmann"]
    a = math.log10(f.optimum(1e24).params / f.optimum(1e23).params)
    b = math.log10(f.optimum(1e24).tokens / f.optimum(1e23).tokens)
    assert a == pytest.approx(0.46, abs=0.015) and b == pytest.approx(0.54, abs=0.015)
    assert a + b == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("flops", (GPT3_FLOPS, CHINCHILLA_FLOPS))
def test_about_20_tokens_per_parameter_at_gpt3_and_chinchilla_scale(flops: float) -> None:
    """Epoch AI's refit puts the optimum at ~20 tokens/parameter, as Hoffmann's approaches 1 and 2 and
    Chinchilla itself (70B on 1.4T tokens); the rule-of-thumb split is exactly 20."""
    epoch = FITS["epoch"].optimum(flops)
    assert 15.0 <= epoch.tokens_per_param <= 30.0
    rule = FITS["hoffmann"].at_ratio(flops)
    assert rule.tokens_per_param == pytest.approx(20.0, rel=1e-12)
    assert FLOPS_PER_PARAM_TOKEN * rule.params * rule.tokens == pytest.approx(flops, rel=1e-12)
    # Besiroglu et al. 2024: the published, rounded approach-3 parameters overshoot the other approaches
    assert FITS["hoffmann"].optimum(flops).tokens_per_param > 3 * epoch.tokens_per_param


def test_chinchilla_itself() -> None:
    """70B parameters on Gopher's 5.76e23 FLOPs buy 1.37T tokens (published: 1.4T); the Epoch fit puts the
    optimum within 10% of 70B."""
    chinchilla = FITS["epoch"].for_model(CHINCHILLA_FLOPS, 70e9)
    assert chinchilla.tokens == pytest.approx(1.4e12, rel=0.03)
    assert FITS["epoch"].optimum(CHINCHILLA_FLOPS).params == pytest.approx(70e9, rel=0.10)


# ------------------------------------------------------------------------------------ failures, Young
def test_failure_rate_is_llama3s() -> None:
    """419 unexpected interruptions in 54 days on 2,048 nodes → λ per node-hour; the Llama 3 job's MTBF."""
    interruptions = NODE_FAILURES_PER_HOUR * LLAMA3_NODES * LLAMA3_DAYS * 24
    assert interruptions == pytest.approx(LLAMA3_UNEXPECTED_INTERRUPTIONS, rel=1e-12)
    assert job_mtbf_s(LLAMA3_NODES) / 3600 == pytest.approx(54 * 24 / 419, rel=1e-12)  # ≈ 3.1 h
    assert job_mtbf_s(1) == pytest.approx(job_mtbf_s(LLAMA3_NODES) * LLAMA3_NODES)


@pytest.mark.parametrize(
    ("write_s", "mtbf_s", "restart_s"), [(3.0, 11_000.0, 600.0), (60.0, 3.6e6, 0.0), (0.5, 900.0, 30.0)]
)
def test_young_interval_minimises_the_waste(write_s: float, mtbf_s: float, restart_s: float) -> None:
    tau = young_interval_s(write_s, mtbf_s)
    assert tau == pytest.approx(math.sqrt(2 * write_s * mtbf_s))
    found = minimize_scalar(lambda t: waste_fraction(t, write_s, mtbf_s, restart_s),
                            bounds=(tau / 100, tau * 100), method="bounded", options={"xatol": 1e-9 * tau})  # fmt: skip
    assert found.x == pytest.approx(tau, rel=1e-3)
    best = waste_fraction(tau, write_s, mtbf_s, restart_s)
    assert best == pytest.approx(math.sqrt(2 * write_s / mtbf_s) + restart_s / mtbf_s, rel=1e-12)
    for k in (0.5, 0.9, 1.1, 2.0):
        assert waste_fraction(tau * k, write_s, mtbf_s, restart_s) > best


def test_llama3_405b_keeps_more_than_90_percent_effective_time() -> None:
    """Published: effective training time > 90% (arXiv 2407.21783, Sec. 3.3.4); the model, with its default
    storage bandwidth and restart time, loses less than 10%."""
    plan = reliability(LLAMA3_NODES, 405e9)
    assert 0.0 < plan.waste_fraction < 0.10
    assert plan.checkpoint_bytes == pytest.approx(405e9 * 14)
    assert plan.interval_s == pytest.approx(young_interval_s(plan.checkpoint_write_s, plan.mtbf_s))


def test_a_job_that_cannot_progress_is_infeasible() -> None:
    with pytest.raises(InfeasibleConfig, match="checkpoints and restarts take all the time"):
        reliability(LLAMA3_NODES, 405e9, restart_minutes=1000.0)


# ---------------------------------------------------------------------------------------------- CLI
@pytest.fixture
def tiny_file(make_doc: Any, write_scenario: Any) -> Path:
    """A tiny model on one 8-GPU A100 host, tp 2 · dp 4, 8 micro-batches of 256 tokens per replica."""
    return write_scenario(make_doc(model=TINY, tp=2, micro_batches=8), "tiny")


def plan_json(capsys: Any, *argv: str) -> dict[str, Any]:
    """``clustersim plan ... --json``: the one JSON object it prints."""
    assert main(["plan", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    return json.loads(out)


def test_time_and_cost_add_up(tiny_file: Path, capsys: Any) -> None:
    doc = plan_json(capsys, "--scenario", str(tiny_file), "--tokens", "1e9", "--usd-per-gpu-hour", "3")
    t, rel = doc["training"], doc["training"]["reliability"]
    assert t["layout_source"] == "the scenario's" and t["gpus"] == 8 and t["nodes"] == 1
    assert t["steps"] == math.ceil(1e9 / t["tokens_per_step"])
    ideal_days = t["steps"] * t["step_time_s"] / 86_400
    assert t["ideal_days"] == pytest.approx(ideal_days, rel=1e-12)
    assert t["days"] == pytest.approx(ideal_days / (1 - rel["waste_fraction"]), rel=1e-12)
    assert t["gpu_hours"] == pytest.approx(8 * t["days"] * 24, rel=1e-12)
    assert t["usd"] == pytest.approx(3 * t["gpu_hours"], rel=1e-12)
    kwh = A100_TDP_W * t["gpu_hours"] * PUE / 1000
    assert t["energy_mwh"] == pytest.approx(kwh / 1000, rel=1e-12)
    assert t["co2_tonnes"] == pytest.approx(kwh * GRID_G_CO2_PER_KWH / 1e6, rel=1e-12)
    assert rel["expected_interruptions"] == pytest.approx(t["days"] * 24 / rel["mtbf_h"], rel=1e-12)
    assert rel["waste_fraction"] == pytest.approx(
        rel["checkpoint_fraction"] + rel["lost_work_fraction"] + rel["restart_fraction"], rel=1e-12
    )
    n = doc["model"]["params"]
    assert doc["compute_optimal"]["flops"] == pytest.approx(6 * n * 1e9, rel=1e-12)


def test_a_gpu_hour_budget_is_spent(tiny_file: Path, capsys: Any) -> None:
    doc = plan_json(capsys, "--model", str(tiny_file), "--budget-gpu-hours", "5000")
    t = doc["training"]
    assert t["gpu_hours"] == pytest.approx(5000, rel=1e-3)  # up to one step of rounding
    assert doc["model"]["tokens"] == pytest.approx(t["steps"] * t["tokens_per_step"], rel=1e-3)


def test_a_flop_budget_alone_gives_the_compute_optimal_split(capsys: Any) -> None:
    doc = plan_json(capsys, "--budget-flops", "5.76e23", "--fit", "epoch")
    opt = FITS["epoch"].optimum(CHINCHILLA_FLOPS)
    assert doc["compute_optimal"]["params"] == pytest.approx(opt.params, rel=1e-12)
    assert doc["rule_of_thumb"]["tokens_per_param"] == pytest.approx(20.0)
    assert doc["model"] is None and doc["training"] is None
    assert main(["plan", "--budget-flops", "5.76e23"]) == 0
    out = capsys.readouterr().out
    assert "loss-optimal" in out and "20 tokens/parameter" in out


def test_a_gpu_hour_budget_without_a_model_assumes_an_mfu(capsys: Any) -> None:
    doc = plan_json(capsys, "--budget-gpu-hours", "1e6", "--cluster", "dgx-h100", "--mfu", "0.5")
    h100_bf16 = 989.4e12  # dense BF16 FLOP/s of an H100 SXM (NVIDIA datasheet; docs/reference.md)
    assert doc["compute_optimal"]["flops"] == pytest.approx(1e6 * 3600 * h100_bf16 * 0.5, rel=1e-3)
    assert doc["assumed_mfu"] == 0.5


def test_without_a_layout_the_plan_searches_one(capsys: Any) -> None:
    doc = plan_json(
        capsys, "--model", "gpt3-125m", "--cluster", "dgx-a100", "--nodes", "1", "--tokens", "2e9", "--workers",
        "1", "--set", "training.seq_len=512", "--set", "training.global_batch=16",
    )  # fmt: skip
    t = doc["training"]
    assert t["layout_source"].startswith("best of a quick search")
    assert t["gpus"] == 8 and t["tokens_per_step"] == 16 * 512
    assert main(["plan", "--model", "gpt3-125m", "--cluster", "dgx-a100", "--nodes", "1", "--tokens", "2e9",
                 "--workers", "1", "--set", "training.seq_len=512", "--set", "training.global_batch=16"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    for text in ("training time", "GPU-hours", "cost", "energy", "CO2", "checkpoints", "expected"):
        assert text in out, text


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no budget
        ["--budget-flops", "1e20", "--tokens", "1e9"],  # two budgets
        ["--budget-flops", "0"],
        ["--budget-flops", "lots"],
        ["--tokens", "1e9"],  # no model
        ["--model", "llama3-8b", "--tokens", "1e9"],  # no cluster
        ["--budget-gpu-hours", "1e5"],  # no GPU to price the hours in FLOPs
        ["--model", "llama-9", "--budget-flops", "1e20"],
        ["--budget-gpu-hours", "1e5", "--cluster", "dgx-h100", "--mfu", "1.5"],
        ["--budget-flops", "1e20", "--fit", "kaplan"],
        ["--scenario", "missing.yaml", "--tokens", "1e9"],
        ["--model", "llama3-8b", "--cluster", "no-such-cluster", "--tokens", "1e9"],
    ],
)
def test_bad_input_exits_2(argv: list[str], capsys: Any) -> None:
    try:
        code = main(["plan", *argv])
    except SystemExit as e:  # argparse
        code = int(e.code or 0)
    assert code == 2
    assert capsys.readouterr().out == ""


def test_a_layout_that_does_not_fit_exits_2(tiny_file: Path, capsys: Any) -> None:
    assert main(["plan", "--scenario", str(tiny_file), "--model", "gpt3-175b", "--tokens", "1e9"]) == 2
    assert "does not fit" in capsys.readouterr().err


def test_hopeless_restarts_exit_2(tiny_file: Path, capsys: Any) -> None:
    assert main(["plan", "--scenario", str(tiny_file), "--tokens", "1e9", "--restart-minutes", "1e6"]) == 2
    assert "take all the time" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("text", "value"), [("1e24", 1e24), ("15T", 15e12), ("2.5M", 2.5e6), ("7B", 7e9), ("300", 300.0)]
)
def test_parse_quantity(text: str, value: float) -> None:
    assert parse_quantity(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["", "T", "-1", "0", "inf", "nan", "1e24X", "abc"])
def test_parse_quantity_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_quantity(text)
