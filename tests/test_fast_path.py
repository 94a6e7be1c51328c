"""The search's fast path, proved against the engine over random layouts (issue #11).

For every layout drawn (the search's own candidates, seeded):

* the fast path equals ``simulate()`` with the analytical network model: the same step time, breakdown,
  communication times and event count (it runs the same engine on a lighter event queue, with the routed
  geometry shared between layouts);
* against the engine with the scenario's own (flow) network model it agrees to within 1e-6 wherever it does
  not mark contention, and where it does, it is a lower bound (contention only slows collectives down), so
  that the search may rank by it and confirm the best with the engine;
* run with the flow model instead (the search's confirmations), it gives the engine's own report.

Timings of the fast path and the engine are measured in ``benchmarks/bench_fast_path.py``, not here.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest

from simulator.planning.fastpath import FastPath, oversubscribed
from simulator.planning.search_space import Layout, build_space, with_layout
from simulator.scenario import Scenario, scenario_from_dict
from simulator.simulate import simulate
from simulator.topology.loader import build_cluster

MODEL = {"layers": 12, "hidden": 1024, "heads": 16, "vocab": 32000}
UNMARKED_RTOL = 1e-6  # fast path vs flow engine where no link is over-subscribed: the same schedule


def _scenarios(make_doc: Callable[..., dict[str, Any]]) -> list[tuple[str, Scenario, int]]:
    """(name, scenario, layouts to draw): a 4-host single-switch cluster (NICs shared by rings and pipeline
    transfers) and two H100 hosts with NDR NICs on one switch."""
    small = make_doc(gpus_per_host=8, nodes=4, model=MODEL, tp=2, pp=2, seq_len=1024, zero=1)
    small["training"].update(global_batch=64, micro_batch=1)
    shipped = {
        "model": {"layers": 8, "hidden": 2048, "heads": 16, "kv_heads": 8, "vocab": 32000, "gated_mlp": True},
        "cluster": {
            "topology": {
                "name": "dgx-h100-2",
                "nodes": 2,
                "host": {
                    "builder": "nvswitch",
                    "gpu": "h100-sxm",
                    "gpus": 8,
                    "nvlink_gbps": 450.0,
                    "nvlink_type": "nvlink4",
                    "nics": 8,
                    "nic_gbps": 50.0,
                    "nic_type": "ib-ndr",
                    "pcie_gbps": 64.0,
                    "pcie_type": "pcie5",
                },
                "fabric": {"builder": "single_switch", "link_gbps": 50.0, "link_type": "ib-ndr"},
            }
        },  # fmt: skip
        "training": {"seq_len": 2048, "global_batch": 32, "micro_batch": 1, "precision": "bf16"},
        "parallelism": {"tp": 2, "pp": 2, "zero": 1},
    }
    return [
        ("4x8-a100-single-switch", scenario_from_dict(small), 24),
        ("2x8-h100", scenario_from_dict(shipped), 16),
    ]


def _draw(scenario: Scenario, count: int, seed: int) -> tuple[FastPath, list[Layout]]:
    cluster = build_cluster(scenario.topology, file=scenario.topology_file)
    space = build_space(scenario, cluster, 10_000)
    layouts = list(space.candidates)
    random.Random(seed).shuffle(layouts)
    return FastPath(cluster), layouts[:count]


@pytest.fixture(scope="module")
def outcomes(make_doc: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """Every drawn layout timed three ways: fast path, analytical engine, flow engine."""
    rows: list[dict[str, Any]] = []
    for seed, (name, scenario, count) in enumerate(_scenarios(make_doc)):
        fast_path, layouts = _draw(scenario, count, seed)
        assert len(layouts) == count, f"{name}: the space has only {len(layouts)} candidates"
        for lay in layouts:
            sc = with_layout(scenario, lay)
            bound = fast_path.compute_bound(sc)
            stream = fast_path.stream_bound(sc)  # builds the programs and classes evaluate() reuses
            fast = fast_path.evaluate(sc)
            analytical = simulate(with_layout(scenario, lay, network="analytical")).report
            flow = simulate(with_layout(scenario, lay, network="flow")).report
            fast_flow = fast_path.evaluate(with_layout(scenario, lay), network="flow").report
            rows.append({"name": f"{name} {lay.label}", "fast": fast, "analytical": analytical, "flow": flow,
                         "fast_flow": fast_flow, "bound": bound, "stream": stream})  # fmt: skip
    return rows


def test_fast_path_is_the_analytical_engine(outcomes: list[dict[str, Any]]) -> None:
    for row in outcomes:
        fast, ref = row["fast"].report, row["analytical"]
        assert fast.step_time_s == pytest.approx(ref.step_time_s, rel=1e-12), row["name"]
        assert fast.breakdown.model_dump() == pytest.approx(ref.breakdown.model_dump(), rel=1e-9, abs=1e-15)
        assert fast.comm.model_dump() == pytest.approx(ref.comm.model_dump(), rel=1e-9, abs=1e-15)
        assert fast.events == ref.events
        assert fast.memory_gib_per_gpu == ref.memory_gib_per_gpu
        assert fast.hfu == pytest.approx(ref.hfu, rel=1e-9)


def test_fast_path_agrees_with_the_flow_engine_unless_marked(outcomes: list[dict[str, Any]]) -> None:
    marked = 0
    for row in outcomes:
        fast, flow = row["fast"], row["flow"]
        if fast.contended:
            marked += 1
            assert fast.report.step_time_s <= flow.step_time_s * (1 + 1e-9), row["name"]
        else:
            assert fast.report.step_time_s == pytest.approx(flow.step_time_s, rel=UNMARKED_RTOL), row["name"]
    # the draw covers both cases, so that both branches above are exercised
    assert 0 < marked < len(outcomes), f"{marked} of {len(outcomes)} layouts marked"


def test_shared_geometry_runs_the_flow_model_exactly(outcomes: list[dict[str, Any]]) -> None:
    """The search's confirmation runs: the flow model on the lighter event queue with the routed geometry
    shared between layouts gives the engine's own report."""
    for row in outcomes:
        got, ref = row["fast_flow"], row["flow"]
        assert got.step_time_s == ref.step_time_s, row["name"]
        assert got.breakdown == ref.breakdown and got.comm == ref.comm and got.events == ref.events


def test_compute_bound_is_a_lower_bound(outcomes: list[dict[str, Any]]) -> None:
    """The search skips a layout whose compute bound cannot beat the best: it must never exceed the step."""
    for row in outcomes:
        assert 0 < row["bound"] <= row["fast"].report.step_time_s * (1 + 1e-12), row["name"]
    # and it is not vacuous: the pipeline's fill and drain make it close on most layouts
    close = sum(row["bound"] >= 0.5 * row["fast"].report.step_time_s for row in outcomes)
    assert close >= len(outcomes) // 2


def test_stream_bound_is_a_lower_bound(outcomes: list[dict[str, Any]]) -> None:
    """The search also skips a layout whose busiest stream cannot beat the best: it must never exceed the
    fast step, nor the flow engine's (contention only slows collectives down)."""
    for row in outcomes:
        assert 0 < row["stream"] <= row["fast"].report.step_time_s, row["name"]
        assert row["stream"] <= row["flow"].step_time_s, row["name"]
    # and it sees what the compute bound does not on some layouts (a DP reduction, ZeRO gathers)
    assert any(row["stream"] > row["bound"] for row in outcomes)


def test_oversubscription_sweep() -> None:
    """Two collectives over one link at full rate each contend; back to back they do not."""
    import numpy as np

    from simulator.network.models.base import RoutedPhase
    from simulator.network.phases import Phase

    empty = np.zeros(1)
    phase = Phase(np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64), np.ones(1), 1)
    routed = (RoutedPhase(phase, np.array([3]), np.array([1.0]), 1.0, 0.0, empty, 10.0),)
    half = (RoutedPhase(phase, np.array([3]), np.array([0.5]), 1.0, 0.0, empty, 10.0),)
    cap = np.full(5, 10.0)
    assert oversubscribed([(0.0, 1.0, routed), (0.5, 1.5, routed)], cap)
    assert not oversubscribed([(0.0, 1.0, routed), (1.0, 2.0, routed)], cap)
    assert not oversubscribed([(0.0, 1.0, half), (0.5, 1.5, half)], cap)
    assert not oversubscribed([(0.0, 1.0, routed)], cap)
