"""Pipeline schedules on the simulated timeline against their closed forms (docs/reference.md, "Pipeline
schedules"): GPipe and 1F1B (p−1)·(t_F + t_B), interleaved (p−1)·(t_F + t_B)/v, zero-bubble ZB-H1
(p−1)·(t_F + t_B − t_W) (Qi et al. 2023) at 1F1B's memory; and the task orders' invariants."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.engine.trace import Trace
from simulator.errors import InfeasibleConfig
from simulator.parallel.schedules.base import Pass
from simulator.parallel.schedules.zero_bubble import peak_in_flight
from simulator.registry import SCHEDULES
from simulator.simulate import SimulationResult, simulate

# Long sequences on a narrow model: attention makes the forward (and the input-gradient backward) heavier
# than the weight-gradient GEMMs, t_W < t_F, the regime where ZB-H1's closed form holds; the 128-token
# vocabulary keeps the embedding and output layers under 1% of a stage.
LONG = {"layers": 16, "hidden": 2048, "heads": 16, "vocab": 128}
# The wide model of test_step_behaviour: GEMM-bound; t_W > t_F when the main-gradient add is its own kernel.
WIDE = {"layers": 16, "hidden": 8192, "heads": 64, "vocab": 128}


def run(
    make_scenario, p: int, m: int, schedule: str, model: dict, seq: int, v: int = 1, **extra: object
) -> SimulationResult:
    """p stages of 8 layers on one host of p GPUs (tp = dp = 1: only pipeline communication)."""
    scenario = make_scenario(
        gpus_per_host=p, model=dict(model, layers=8 * p), pp=p, micro_batches=m, seq_len=seq,
        schedule=schedule, virtual_stages=v, training__optimizer="sgd", **extra,
    )  # fmt: skip
    return simulate(scenario)


def pass_times(trace: Trace, m: int) -> dict[str, np.ndarray]:
    """Per stage, the per-micro-batch compute time of each kind of pass."""
    out = {}
    for cat in ("forward", "backward", "backward_input", "backward_weight", "recompute"):
        per_rank = []
        for rank in trace.ranks:
            rows = [i for i in trace.select(rank) if trace.category[i] == cat]
            per_rank.append(float((trace.end_s[rows] - trace.start_s[rows]).sum()) / m)
        out[cat] = np.array(per_rank)
    return out


def tolerance(t: dict[str, np.ndarray], trace: Trace, p: int, m: int, v: int = 1) -> float:
    """What the stages' residual non-uniformity (the embedding on the first, the loss on the last) and the
    pipeline messages can account for: a flow shop's first-stage idle time differs from the uniform value
    by at most m·(range of each pass time), and 2(p−1)·v messages cross the critical path."""
    spread = sum(float(np.ptp(x)) for x in t.values())
    return m * spread + 2 * (p - 1) * v * max_p2p(trace)


def max_p2p(trace: Trace) -> float:
    rows = np.flatnonzero(np.array(trace.comm) == "pp")
    return float((trace.end_s[rows] - trace.start_s[rows]).max()) if rows.size else 0.0


@pytest.mark.parametrize("p,m", [(2, 4), (4, 4), (4, 8)])
@pytest.mark.parametrize("schedule", ["gpipe", "1f1b", "interleaved", "zero-bubble"])
def test_bubble_matches_closed_form(make_scenario, schedule, p, m):
    """The first stage's idle time against each schedule's closed form, with t_F, t_B, t_W read from the
    trace; the tolerance covers the 2(p−1)·v pipeline messages on the critical path."""
    v = 2 if schedule == "interleaved" else 1
    res = run(make_scenario, p, m, schedule, LONG, 16384, v)
    t = pass_times(res.trace, m)
    f, b, w = (float(np.mean(t[k])) for k in ("forward", "backward", "backward_weight"))
    b += float(np.mean(t["backward_input"]))
    if schedule == "zero-bubble":
        assert 0 < w < f, "ZB-H1's closed form needs t_W ≤ t_F"
        expected = (p - 1) * (f + b - w)
    else:
        expected = (p - 1) * (f + b) / v
    tol = tolerance(t, res.trace, p, m, v)
    assert tol < 0.03 * expected
    assert res.report.breakdown.bubble_s == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8)])
def test_zero_bubble_bubble_when_weight_gradients_are_long(make_scenario, p, m):
    """With t_W > t_F the postponed Ws no longer fit the gaps; the first stage still waits (p−1)·t_B for
    its first input gradient: the bubble is (p−1)·max(t_B, t_F + t_B − t_W)."""
    # without gradient-accumulation fusion: the W pass adds its fp32 main-gradient update, longer than F
    res = run(make_scenario, p, m, "zero-bubble", WIDE, 2048, framework__gradient_accumulation_fusion=False)
    t = pass_times(res.trace, m)
    f, b, w = (float(np.mean(t[k])) for k in ("forward", "backward_input", "backward_weight"))
    assert w > f
    expected = (p - 1) * max(b, f + b - w)
    tol = tolerance(t, res.trace, p, m)
    assert tol < 0.03 * expected
    assert res.report.breakdown.bubble_s == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize("model,seq", [(LONG, 16384), (WIDE, 2048)])
@pytest.mark.parametrize("p,m", [(2, 4), (4, 8)])
def test_zero_bubble_is_shorter_than_1f1b_at_equal_memory(make_scenario, model, seq, p, m):
    """Same work, same peak memory, a smaller bubble and a shorter step."""
    ofob = run(make_scenario, p, m, "1f1b", model, seq)
    zb = run(make_scenario, p, m, "zero-bubble", model, seq)
    a, z = ofob.report, zb.report
    assert z.memory_gib_per_gpu.total == pytest.approx(a.memory_gib_per_gpu.total, rel=1e-9)
    assert z.breakdown.compute_s == pytest.approx(a.breakdown.compute_s, rel=1e-6)
    assert z.breakdown.bubble_s < 0.8 * a.breakdown.bubble_s
    assert z.step_time_s < a.step_time_s - 0.5 * (a.breakdown.bubble_s - z.breakdown.bubble_s)


@settings(max_examples=40, deadline=None)
@given(p=st.integers(1, 8), m=st.integers(1, 24))
def test_zero_bubble_orders(p, m):
    """Every stage runs F, B and W of every micro-batch once, in that order per micro-batch and in
    micro-batch order per kind, and never holds more than 1F1B's first stage (min(p, m))."""
    zb, ofob = SCHEDULES.get("zero-bubble")(), SCHEDULES.get("1f1b")()
    for stage in range(p):
        tasks = zb.tasks(stage, p, m, 1)
        for kind in (Pass.F, Pass.B, Pass.W):
            assert [t.mb for t in tasks if t.kind is kind] == list(range(m))
        pos = {(t.kind, t.mb): i for i, t in enumerate(tasks)}
        assert all(pos[(Pass.F, i)] < pos[(Pass.B, i)] < pos[(Pass.W, i)] for i in range(m))
        assert peak_in_flight(tasks) <= ofob.in_flight(0, p, m, 1) == min(p, m)
        assert peak_in_flight(ofob.tasks(stage, p, m, 1)) == ofob.in_flight(stage, p, m, 1)


def test_zero_bubble_rejects_virtual_stages(make_scenario):
    """ZB-H1 runs one chunk per stage."""
    with pytest.raises(InfeasibleConfig, match="virtual_stages"):
        SCHEDULES.get("zero-bubble")().check(4, 8, 2)
