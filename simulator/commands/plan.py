"""``clustersim plan``: compute-optimal model and data for a budget; time and cost to train on a cluster.

Three budgets, one of them required:

* ``--budget-flops F``: Chinchilla's loss-optimal (N, D) for C = F, and the ~20 tokens/parameter split;
  with a model, the tokens F buys it (D = F / 6N), and with a cluster what training on them takes.
* ``--budget-gpu-hours H`` (needs a cluster): with a model, the tokens H GPU-hours train on the simulated
  layout, interruptions included, and their C = 6·N·D; without one, C = H × peak × an assumed MFU.
* ``--tokens D`` (needs a model and a cluster): what training the model on D tokens takes.

The step comes from a layout: the scenario's (``--scenario``, or ``--model`` given as a scenario file), or
the best of a quick ``clustersim search``. Formulas and defaults: docs/search-and-plan.md.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from simulator.errors import InfeasibleConfig, ScenarioError
from simulator.files import finite_json
from simulator.models.catalog import model_catalog, model_names
from simulator.models.params import parameter_count
from simulator.models.spec import ModelSpec
from simulator.planning import SECONDS_PER_HOUR
from simulator.planning.cost import GRID_G_CO2_PER_KWH, PUE, TrainingCost, tokens_for_gpu_hours, training_cost
from simulator.planning.reliability import NODE_FAILURES_PER_HOUR, Reliability, reliability
from simulator.planning.scaling import (
    ASSUMED_MFU,
    FLOPS_PER_PARAM_TOKEN,
    Allocation,
    LossFit,
    gpu_hours_to_flops,
    loss_fit,
)
from simulator.planning.search import SearchOptions, run_search
from simulator.planning.search_space import Layout
from simulator.report.progress import reporting, stage
from simulator.report.schema import StepReport
from simulator.report.style import gpu_display_name
from simulator.scenario import (
    ModelConfig,
    Scenario,
    apply_override,
    parse_override,
    read_yaml,
    scenario_from_dict,
)
from simulator.simulate import simulate
from simulator.topology.loader import build_cluster, load_topology

# Training settings of a scenario made from a catalog model: 4,096-token sequences and 1,024 of them per
# step (4M tokens), Llama 3 405B's first pre-training stage (arXiv 2407.21783, Sec. 3.4.1). Change with --set.
DEFAULT_TRAINING: dict[str, Any] = {
    "seq_len": 4096,
    "global_batch": 1024,
    "micro_batch": 1,
    "precision": "bf16",
}
QUICK_SEARCH_POINTS = 48  # layouts a plan's quick search simulates


@dataclass(frozen=True)
class Simulated:
    """The step a plan is based on, and the cluster it ran on."""

    scenario: Scenario
    report: StepReport
    nodes: int
    gpu_tdp_w: float
    layout: str  # the layout's compact name
    layout_source: str


# What a plan may be asked about (issue #12: 1e-100 FLOPs planned 4e-46 parameters at a loss of 2.4e18,
# 1e308P printed Infinity). Below 1e15 FLOPs the compute-optimal model has under 3M parameters, far below
# the 70M-16B parameters of the runs the fits come from (Hoffmann et al. 2022, arXiv 2203.15556, Sec. 1);
# 1e32 is over 10^6 times Llama 3 405B's 3.8e25 FLOPs (Dubey et al. 2024, arXiv 2407.21783, Sec. 3.2.1).
BUDGET_BOUNDS: dict[str, tuple[float, float, str]] = {
    "budget_flops": (1e15, 1e32, "--budget-flops"),
    "budget_gpu_hours": (1e-2, 1e12, "--budget-gpu-hours"),
    "tokens": (1e6, 1e18, "--tokens"),  # Llama 3 trained on 1.5e13 (Dubey 2024)
}


def check_budget(args: argparse.Namespace) -> None:
    """The budget given is finite and within ``BUDGET_BOUNDS``, or a one-line error naming the flag."""
    for attr, (low, high, flag) in BUDGET_BOUNDS.items():
        value = getattr(args, attr, None)
        if value is None:
            continue
        if not (math.isfinite(value) and low <= value <= high):
            raise ScenarioError(
                f"{value:g} is outside the range planned for; valid: {low:g} to {high:g}", field=flag
            )


def plan_command(args: argparse.Namespace) -> int:
    """Resolve the model and the cluster, simulate a step if there is one, and print the plan."""
    check_budget(args)
    fit = loss_fit(args.fit)
    scenario, layout_given = resolve_scenario(args)
    spec = scenario.model if scenario is not None else model_spec(args.model)
    if args.tokens is not None and scenario is None:
        raise ScenarioError(
            "--tokens needs a model and a cluster (--model and --cluster, or a scenario)", field="--tokens"
        )
    with reporting("plan"):
        if scenario is not None:
            stage("simulating the scenario's layout" if layout_given else "searching a layout (quick search)")
        sim = simulate_step(scenario, layout_given, args.workers) if scenario is not None else None
        stage("costing the training run")
        doc = build_plan(args, fit, spec, sim)
    if args.json:
        sys.stdout.write(finite_json(doc) + "\n")
    else:
        sys.stdout.write(summary(doc))
    return 0


# ------------------------------------------------------------------------------------------ resolving
def model_spec(name: str | None) -> ModelSpec | None:
    """The catalog model called ``name`` (None when no model was given)."""
    if name is None:
        return None
    if name not in model_catalog():
        raise ScenarioError(
            f"unknown model {name!r}; valid: a scenario file or {', '.join(model_names())}", field="--model"
        )
    return ModelConfig.model_validate({"name": name, **model_catalog()[name]}).to_spec()


def _scenario_file(text: str | None) -> Path | None:
    """``text`` as a scenario file when it names one (``--model`` takes a model name or a scenario)."""
    if text is None or not text.endswith((".yaml", ".yml")):
        return None
    return Path(text)


def resolve_scenario(args: argparse.Namespace) -> tuple[Scenario | None, bool]:
    """(the scenario to simulate, whether its layout was given); None without a model or a cluster."""
    model_file = _scenario_file(args.model)
    layout_file = args.scenario or model_file
    if layout_file is not None:
        raw = read_yaml(layout_file, "scenario file")
        if not isinstance(raw, dict):
            raise ScenarioError("a scenario must be a YAML mapping of keys to values", file=str(layout_file))
        if args.scenario is not None and args.model is not None:  # --model replaces the scenario's model
            raw["model"] = _model_entry(args.model, model_file)
        base = layout_file.resolve().parent
    elif args.model is None or args.cluster is None:
        return None, False
    else:
        raw, base = {"model": args.model, "training": copy.deepcopy(DEFAULT_TRAINING)}, Path.cwd()
    if args.cluster is not None:
        topology = str(Path(args.cluster).resolve()) if Path(args.cluster).is_file() else args.cluster
        raw["cluster"] = {"topology": topology, **({"nodes": args.nodes} if args.nodes else {})}
    elif args.nodes is not None:
        apply_override(raw, ["cluster", "nodes"], args.nodes)
    for text in args.overrides:
        apply_override(raw, *parse_override(text))
    return scenario_from_dict(raw, file=str(layout_file or "<plan>"), base_dir=base), layout_file is not None


def _model_entry(model: str, model_file: Path | None) -> Any:
    """The ``model:`` entry named by ``--model``: a catalog name, or the model of a scenario file."""
    if model_file is None:
        return model
    raw = read_yaml(model_file, "scenario file")
    if not isinstance(raw, dict) or "model" not in raw:
        raise ScenarioError("has no model: key", file=str(model_file), field="model")
    return raw["model"]


def simulate_step(scenario: Scenario, layout_given: bool, workers: int | None) -> Simulated:
    """One step with the scenario's layout, or with the best of a quick search when it has none."""
    cluster = build_cluster(scenario.topology, file=scenario.topology_file)
    if layout_given:
        report = simulate(scenario).report
        if not report.fits_memory:
            why = next(w for w in report.warnings if w.startswith("does not fit"))
            raise InfeasibleConfig(
                f"the scenario's layout {why}; clustersim search finds one that fits", field="parallelism"
            )
        source = "the scenario's"
        assert report.layout is not None, "the simulator reports the layout it simulated"
        label = Layout.of_report(report.layout).label
    else:
        options = SearchOptions(top=1, max_points=QUICK_SEARCH_POINTS, workers=workers or os.cpu_count() or 1)
        result = run_search(scenario, options)
        if not result.ranked:
            raise InfeasibleConfig(
                f"no layout of {scenario.model.name} runs and fits on {cluster.num_gpus} GPUs of {cluster.name}",
                field="--nodes",
            )
        report, label = result.best.report, result.best.label
        source = f"best of a quick search, {len(result.space.candidates)} layouts simulated"
    return Simulated(scenario, report, cluster.num_hosts, cluster.gpu_specs[0].tdp_w, label, source)


# ---------------------------------------------------------------------------------------------- plan
def _allocation_json(a: Allocation) -> dict[str, float]:
    return {"flops": a.flops, "params": a.params, "tokens": a.tokens, "tokens_per_param": a.tokens_per_param,
            "loss": a.loss}  # fmt: skip


def _budget(
    args: argparse.Namespace, n_params: float | None, sim: Simulated | None, rel: Reliability | None
) -> tuple[float, float | None]:
    """(compute budget C in FLOPs, tokens for the model, when there is one) from the budget given."""
    if args.budget_flops is not None:
        return args.budget_flops, args.budget_flops / (FLOPS_PER_PARAM_TOKEN * n_params) if n_params else None
    if args.tokens is not None:
        assert n_params is not None, "plan_command requires a model with --tokens"
        return FLOPS_PER_PARAM_TOKEN * n_params * args.tokens, args.tokens
    if sim is not None and rel is not None and n_params is not None:
        tokens = tokens_for_gpu_hours(args.budget_gpu_hours, sim.report, rel)
        return FLOPS_PER_PARAM_TOKEN * n_params * tokens, tokens
    if args.cluster is None:
        raise ScenarioError(
            "--budget-gpu-hours needs --cluster (or a scenario) to know the GPU", field="--budget-gpu-hours"
        )
    peak = load_topology(args.cluster, nodes=args.nodes).gpu_specs[0].peak("bf16")
    return gpu_hours_to_flops(args.budget_gpu_hours, peak, _assumed_mfu(args)), None


def _assumed_mfu(args: argparse.Namespace) -> float:
    """``--mfu``, or the documented default."""
    return args.mfu if args.mfu is not None else ASSUMED_MFU


def _reliability(args: argparse.Namespace, sim: Simulated) -> Reliability:
    """Failures and checkpoints of the simulated job (checkpoint of every parameter, experts included)."""
    params = parameter_count(sim.scenario.model).total
    return reliability(sim.nodes, params, storage_gbps_per_node=args.storage_gbps_per_node,
                       restart_minutes=args.restart_minutes)  # fmt: skip


def build_plan(
    args: argparse.Namespace, fit: LossFit, spec: ModelSpec | None, sim: Simulated | None
) -> dict[str, Any]:
    """The plan as one JSON-ready mapping (the ``--json`` output; ``summary`` prints it)."""
    n_params = float(parameter_count(spec).active) if spec is not None else None
    rel = _reliability(args, sim) if sim is not None else None
    flops, tokens = _budget(args, n_params, sim, rel)
    doc: dict[str, Any] = {
        "fit": asdict(fit),
        "budget": {"flops": args.budget_flops, "gpu_hours": args.budget_gpu_hours, "tokens": args.tokens},
        "compute_optimal": _allocation_json(fit.optimum(flops)),
        "rule_of_thumb": _allocation_json(fit.at_ratio(flops)),
        "assumed_mfu": _assumed_mfu(args) if spec is None and args.budget_gpu_hours is not None else None,
        "model": None,
        "training": None,
    }
    if spec is not None and n_params is not None:
        doc["model"] = {"name": spec.name, **_allocation_json(fit.for_model(flops, n_params))}
    if sim is not None and rel is not None and tokens is not None:
        price = args.usd_per_gpu_hour
        price = price if price is not None else sim.scenario.config.cost.usd_per_gpu_hour
        cost = training_cost(tokens, sim.report, rel, gpu_tdp_w=sim.gpu_tdp_w, usd_per_gpu_hour=price)
        doc["training"] = training_json(sim, cost)
    return doc


def training_json(sim: Simulated, cost: TrainingCost) -> dict[str, Any]:
    """The time-and-cost part of the plan."""
    r, rel = sim.report, cost.reliability
    return {
        "scenario": sim.scenario.name, "gpus": r.gpus, "nodes": sim.nodes, "gpu": r.gpu, "cluster": r.cluster,
        "layout": sim.layout, "layout_source": sim.layout_source, "step_time_s": r.step_time_s,
        "tokens_per_step": cost.tokens_per_step, "tokens_per_s": r.tokens_per_s, "mfu": r.mfu,
        "memory_gib_per_gpu": r.memory_gib_per_gpu.total, "steps": cost.steps,
        "ideal_days": cost.ideal_days, "days": cost.days, "gpu_hours": cost.gpu_hours,
        "usd_per_gpu_hour": cost.usd_per_gpu_hour, "usd": cost.usd, "gpu_tdp_w": cost.gpu_tdp_w, "pue": PUE,
        "energy_mwh": cost.energy_kwh / 1000.0, "grid_g_co2_per_kwh": GRID_G_CO2_PER_KWH,
        "co2_tonnes": cost.co2_tonnes,
        "reliability": {
            "node_failures_per_hour": NODE_FAILURES_PER_HOUR, "mtbf_h": rel.mtbf_s / SECONDS_PER_HOUR,
            "checkpoint_gb": rel.checkpoint_bytes / 1e9, "checkpoint_write_s": rel.checkpoint_write_s,
            "checkpoint_interval_min": rel.interval_s / 60.0, "restart_min": rel.restart_s / 60.0,
            "checkpoint_fraction": rel.checkpoint_fraction, "lost_work_fraction": rel.lost_work_fraction,
            "restart_fraction": rel.restart_fraction, "waste_fraction": rel.waste_fraction,
            "expected_interruptions": cost.interruptions,
        },
    }  # fmt: skip


# -------------------------------------------------------------------------------------------- summary
def _si(value: float, unit: str = "") -> str:
    """``1.23 T`` style: thousands, millions, billions (B), trillions (T)."""
    for scale, prefix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}".rstrip()


def _duration(seconds: float) -> str:
    """Seconds, minutes or hours, whichever reads best."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / SECONDS_PER_HOUR:.1f} h"


def _allocation_line(a: dict[str, float]) -> str:
    return (f"{_si(a['params'])} parameters on {_si(a['tokens'])} tokens "
            f"({a['tokens_per_param']:.1f} tokens/parameter), loss {a['loss']:.3f}")  # fmt: skip


def summary(doc: dict[str, Any]) -> str:
    """The plan in readable lines."""
    fit = doc["fit"]
    mfu = f", at an assumed MFU of {doc['assumed_mfu']:.0%}" if doc["assumed_mfu"] else ""
    lines = [
        f"clustersim plan · Chinchilla loss fit '{fit['name']}': {fit['source']}",
        f"  compute budget          {doc['compute_optimal']['flops']:.3g} FLOP (C = 6·N·D){mfu}",
        f"  loss-optimal            {_allocation_line(doc['compute_optimal'])}",
        f"  20 tokens/parameter     {_allocation_line(doc['rule_of_thumb'])}",
    ]
    if doc["model"] is not None:
        lines.append(f"  {doc['model']['name']:<23} {_allocation_line(doc['model'])}")
    if doc["training"] is not None:
        lines += training_lines(doc["training"])
    return "\n".join(lines) + "\n"


def training_lines(t: dict[str, Any]) -> list[str]:
    """The time-and-cost lines of the summary."""
    rel = t["reliability"]
    return [
        f"training on {t['gpus']:,} × {gpu_display_name(t['gpu'])} ({t['nodes']} nodes of {t['cluster']})",
        f"  layout                  {t['layout']} ({t['layout_source']})",
        f"  step                    {t['step_time_s']:.3f} s for {_si(t['tokens_per_step'])} tokens: "
        f"{t['tokens_per_s']:,.0f} tokens/s, MFU {t['mfu']:.1%}, {t['memory_gib_per_gpu']:.1f} GiB/GPU",
        f"  failures                job MTBF {_duration(rel['mtbf_h'] * SECONDS_PER_HOUR)} (Llama 3: "
        f"{rel['node_failures_per_hour']:.3g} interruptions per node-hour), {rel['expected_interruptions']:.1f} expected",
        f"  checkpoints             {rel['checkpoint_gb']:,.0f} GB written in {_duration(rel['checkpoint_write_s'])} "
        f"every {_duration(rel['checkpoint_interval_min'] * 60)} (Young), restart {_duration(rel['restart_min'] * 60)}",
        f"  time lost               {rel['waste_fraction']:.1%} (checkpoints {rel['checkpoint_fraction']:.1%}, "
        f"redone work {rel['lost_work_fraction']:.1%}, restarts {rel['restart_fraction']:.1%})",
        f"  training time           {t['days']:.1f} days ({t['ideal_days']:.1f} without interruptions), {t['steps']:,} steps",
        f"  GPU-hours               {t['gpu_hours']:,.0f}",
        f"  cost                    ${t['usd']:,.0f} at ${t['usd_per_gpu_hour']:g} per GPU-hour",
        f"  energy                  {t['energy_mwh']:,.1f} MWh ({t['gpu_tdp_w']:.0f} W TDP × GPU-hours × PUE {t['pue']})",
        f"  CO2                     {t['co2_tonnes']:,.1f} t ({t['grid_g_co2_per_kwh']:.0f} g/kWh, world average)",
    ]  # fmt: skip
