"""DualPipeV and ZB-H2 on the timeline.

DualPipeV (deepseek-ai/DualPipe, ``dualpipe/dualpipev.py``): the task order of each rank against the
reference's ``DualPipeV.step`` transcribed by hand; every (micro-batch, chunk) F, B and W exactly once; no
deadlock, checked by a dependency replay of the orders; the V placement; the bubble against the README's
formula (P − 1)·(F&B + B − 3W) in the regime of its figure; the engine against the replay with the pass times
it measured; --full against the symmetric run; activations (PP + 1 chunks, README table).
ZB-H2 (Qi et al. 2024, arXiv 2401.10241, Table 1): bubble (p − 1)·(T_F + T_B − 2T_W), memory (2p − 1) micro-
batches, its orders' invariants.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_schedules import LONG, WIDE, max_p2p, pass_times, tolerance
from test_symmetry import assert_same_step

from simulator.errors import InfeasibleConfig
from simulator.parallel.schedules.base import Pass, Task
from simulator.parallel.schedules.zero_bubble import peak_in_flight
from simulator.registry import SCHEDULES
from simulator.scenario import load_scenario
from simulator.simulate import SimulationResult, simulate

DUALPIPEV = SCHEDULES.get("dualpipev")()


def parse(order: str) -> list[Task]:
    """``"F0.1"``: forward of micro-batch 1 through chunk (phase) 0; ``F*`` a paired forward (the forward of
    an ``_forward_backward_chunk`` pair); ``BW`` a whole backward, ``B`` a split one (``enable_zb``), ``W``
    its weight gradient."""
    out = []
    for tok in order.split():
        head, mb = tok.split(".")
        paired = head.endswith("*")
        kind, chunk = head.rstrip("*")[:-1], int(head.rstrip("*")[-1])
        out.append(Task(Pass(kind), int(mb), chunk, paired))
    return out


# DualPipeV.step for num_ranks = 2, num_chunks = 4, followed call by call (steps 1-8; a W pops the oldest
# split backward, WeightGradStore is FIFO). Rank 0: step 1 two F0, step 2 F0 F1, step 3 B1(zb) W F1, step 4
# F0&B1 F1&B0, step 5 B1 F1&B0, step 6 (i = 0 = step_6 // 2, even rank: B1 whole, then zb on) B1 B0(zb),
# step 7 W B0(zb), step 8 W. Rank 1: steps 1, 3, 5, 7 empty; step 2 two F0 F1; step 4 twice, the first pair
# not overlapped on the last rank ("We don't overlap these two chunks"); step 6 (odd rank: zb on at i = 1,
# before B1) B1 B0, B1(zb) B0(zb); step 8 two Ws.
REFERENCE_P2_M4 = {
    0: "F0.0 F0.1 F0.2 F1.0 B1.0 W1.0 F1.1 F0*.3 BW1.1 F1*.2 BW0.0 BW1.2 F1*.3 BW0.1 BW1.3 B0.2 W0.2 B0.3 W0.3",
    1: "F0.0 F1.0 F0.1 F1.1 F0.2 BW1.0 F1*.2 BW0.0 F0*.3 BW1.1 F1*.3 BW0.1 BW1.2 BW0.2 B1.3 B0.3 W1.3 W0.3",
}


@pytest.mark.parametrize("rank", [0, 1])
def test_dualpipev_order_is_the_reference(rank):
    assert DUALPIPEV.tasks(rank, 2, 4, 2) == parse(REFERENCE_P2_M4[rank])


def test_dualpipev_places_a_v():
    """Rank s holds virtual stages s and 2P − 1 − s; stage_of inverts it."""
    p = 4
    assert [[DUALPIPEV.virtual_stage(s, c, p) for c in (0, 1)] for s in range(p)] == [
        [0, 7],
        [1, 6],
        [2, 5],
        [3, 4],
    ]
    assert [DUALPIPEV.stage_of(v, p) for v in range(2 * p)] == [0, 1, 2, 3, 3, 2, 1, 0]


def replay(stages: int, m: int, f: float, bw: float, w: float) -> tuple[float, list[float]]:
    """List-schedule replay of the orders with fixed pass times and free messages: each task starts when its
    rank is free and its input is there (a paired forward also waits for its backward's input, as the
    reference waits on both receives); raises on deadlock. Returns the step and each rank's idle time."""
    orders = [DUALPIPEV.tasks(r, stages, m, 2) for r in range(stages)]
    dur = {Pass.F: f, Pass.BW: bw, Pass.B: bw - w, Pass.W: w}
    last = 2 * stages - 1

    def needs(r: int, t: Task) -> tuple[str, int, int] | None:
        v = DUALPIPEV.virtual_stage(r, t.chunk, stages)
        if t.kind is Pass.F:
            return ("F", t.mb, v - 1) if v > 0 else None
        if t.kind is Pass.W:
            return ("B", t.mb, v)
        return ("B", t.mb, v + 1) if v < last else ("F", t.mb, v)

    done: dict[tuple[str, int, int], float] = {}
    clock, pos, busy = [0.0] * stages, [0] * stages, [0.0] * stages
    moved = True
    while moved:
        moved = False
        for r in range(stages):
            while pos[r] < len(orders[r]):
                t = orders[r][pos[r]]
                deps = [needs(r, t)] + ([needs(r, orders[r][pos[r] + 1])] if t.paired else [])
                deps = [d for d in deps if d is not None]
                if any(d not in done for d in deps):
                    break
                end = max([clock[r]] + [done[d] for d in deps]) + dur[t.kind]
                clock[r], busy[r] = end, busy[r] + dur[t.kind]
                kind = "F" if t.kind is Pass.F else "W" if t.kind is Pass.W else "B"
                done[(kind, t.mb, DUALPIPEV.virtual_stage(r, t.chunk, stages))] = end
                pos[r] += 1
                moved = True
    assert all(pos[r] == len(orders[r]) for r in range(stages)), "deadlock"
    step = max(clock)
    return step, [step - b for b in busy]


@settings(max_examples=40, deadline=None)
@given(p=st.integers(1, 8), extra=st.integers(0, 10))
def test_dualpipev_orders(p, extra):
    """Every (micro-batch, chunk) runs F once and either one whole backward or one B then one W, F before
    its backward, micro-batches in order per chunk and kind; the replay finishes (no deadlock); the first
    rank holds PP + 1 = 2P + 1 chunks of activations (README table), (2P + 1)/2 of a rank's layers."""
    m = 2 * p + extra
    for rank in range(p):
        tasks = DUALPIPEV.tasks(rank, p, m, 2)
        pos = {(t.kind, t.mb, t.chunk): i for i, t in enumerate(tasks)}
        assert len(pos) == len(tasks), "a task twice"
        for c in (0, 1):
            assert [t.mb for t in tasks if t.kind is Pass.F and t.chunk == c] == list(range(m))
            assert [t.mb for t in tasks if t.kind in (Pass.B, Pass.BW) and t.chunk == c] == list(range(m))
            for mb in range(m):
                whole, split = (Pass.BW, mb, c) in pos, (Pass.B, mb, c) in pos
                assert whole != split
                if split:
                    assert pos[(Pass.F, mb, c)] < pos[(Pass.B, mb, c)] < pos[(Pass.W, mb, c)]
                else:
                    assert pos[(Pass.F, mb, c)] < pos[(Pass.BW, mb, c)] and (Pass.W, mb, c) not in pos
        assert all(t.kind is Pass.F for t in tasks if t.paired)
    replay(p, m, 1.0, 2.0, 1.0)
    assert peak_in_flight(DUALPIPEV.tasks(0, p, m, 2)) == 2 * p + 1
    assert DUALPIPEV.in_flight(0, p, m, 2) == (2 * p + 1) / 2


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (4, 16), (8, 16)])
def test_dualpipev_bubble_formula_in_the_figures_regime(p, m):
    """README: (PP/2 − 1)·(F&B + B − 3W) with PP = 2P; exact in the regime its figure draws (F = W, B = 2F),
    F&B = F + B when the pair is not overlapped, as here."""
    f, bw, w = 1.0, 2.0, 1.0
    _, idle = replay(p, m, f, bw, w)
    assert idle[0] == pytest.approx((p - 1) * (f + bw + bw - 3 * w))


def run(
    make_scenario, p: int, m: int, schedule: str, model: dict, seq: int, v: int = 1, **kw
) -> SimulationResult:
    """p stages of 8 layers on one host of p GPUs (tp = dp = 1), as tests/test_schedules.py runs them."""
    scenario = make_scenario(
        gpus_per_host=p, model=dict(model, layers=8 * p), pp=p, micro_batches=m, seq_len=seq,
        schedule=schedule, virtual_stages=v, training__optimizer="sgd", **kw,
    )  # fmt: skip
    return simulate(scenario)


@pytest.mark.parametrize("model,seq", [(LONG, 16384), (WIDE, 2048)])
@pytest.mark.parametrize("p,m", [(2, 4), (4, 8)])
def test_dualpipev_engine_matches_the_replay(make_scenario, model, seq, p, m):
    """The simulated first rank's idle time against the replay with the pass times the trace measured
    (per chunk: F, whole backward, W), within what the messages and the stages' non-uniformity account for."""
    res = run(make_scenario, p, m, "dualpipev", model, seq, v=2)
    t = pass_times(res.trace, 2 * m)  # per rank, time per (micro-batch, chunk): 2m of each
    n_w = np.array([sum(x.kind is Pass.W for x in DUALPIPEV.tasks(r, p, m, 2)) for r in range(p)])
    per_rank = {  # ranks split different numbers of backwards: compare whole passes
        "F": t["forward"],
        "BW": t["backward"] + t["backward_input"] + t["backward_weight"] + t["recompute"],
        "W": t["backward_weight"] * 2 * m / n_w,
    }
    f, bw, w = (float(np.mean(x)) for x in per_rank.values())
    _, idle = replay(p, m, f, bw, w)
    # a flow shop's idle time moves by at most the passes' count times their spread; 2(2P − 2) messages
    # cross the critical path (down and back up the V)
    tol = 2 * m * sum(float(np.ptp(x)) for x in per_rank.values()) + 4 * (p - 1) * max_p2p(res.trace)
    assert tol < 0.1 * idle[0]
    assert res.report.breakdown.bubble_s == pytest.approx(idle[0], abs=tol)
    assert res.report.gpus == p


def test_dualpipev_full_agrees_with_symmetric(make_scenario):
    """4 stages · dp 2 on 8 GPUs, the V's sends both ways through the middle ranks: same step either way."""
    scenario = make_scenario(gpus_per_host=8, pp=4, micro_batches=8, schedule="dualpipev", virtual_stages=2)
    sym = simulate(scenario, mode="symmetric").report
    full = simulate(scenario, mode="full").report
    assert_same_step(full, sym)
    assert full.simulated_ranks == 8 and sym.simulated_ranks < 8


def test_dualpipev_validates():
    with pytest.raises(InfeasibleConfig, match="virtual_stages"):
        DUALPIPEV.validate(4, 8, 1)
    with pytest.raises(InfeasibleConfig, match="micro-batches"):
        DUALPIPEV.validate(4, 7, 2)


# ---------------------------------------------------------------------------------------------------- ZB-H2
ZB_H2 = SCHEDULES.get("zb-h2")()


@settings(max_examples=40, deadline=None)
@given(p=st.integers(1, 8), m=st.integers(1, 24))
def test_zb_h2_orders(p, m):
    """F, B, W of every micro-batch once, in that order per micro-batch and in micro-batch order per kind;
    stage s starts with min(2(p − s) − 1, m) forwards, and holds min(2p − 1, m) micro-batches (Table 1)."""
    for stage in range(p):
        tasks = ZB_H2.tasks(stage, p, m, 1)
        for kind in (Pass.F, Pass.B, Pass.W):
            assert [t.mb for t in tasks if t.kind is kind] == list(range(m))
        pos = {(t.kind, t.mb): i for i, t in enumerate(tasks)}
        assert all(pos[(Pass.F, i)] < pos[(Pass.B, i)] < pos[(Pass.W, i)] for i in range(m))
        warmup = min(2 * (p - stage) - 1, m)
        assert [t.kind for t in tasks[:warmup]] == [Pass.F] * warmup
        assert warmup == m or tasks[warmup].kind is Pass.B
        assert ZB_H2.in_flight(stage, p, m, 1) == min(2 * p - 1, m)


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (4, 16)])
def test_zb_h2_bubble_matches_table_1(make_scenario, p, m):
    """(p − 1)·(T_F + T_B − 2T_W) with t_W ≤ t_F (the long-sequence model of test_schedules)."""
    res = run(make_scenario, p, m, "zb-h2", LONG, 16384)
    t = pass_times(res.trace, m)
    f, b, w = (float(np.mean(t[k])) for k in ("forward", "backward_input", "backward_weight"))
    assert 0 < w < f
    expected = (p - 1) * (f + b - 2 * w)
    tol = tolerance(t, res.trace, p, m)
    assert tol < 0.05 * expected
    assert res.report.breakdown.bubble_s == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize("p,m", [(4, 8)])
def test_zb_h2_trades_memory_for_bubble(make_scenario, p, m):
    """Against ZB-H1: the same compute, a smaller bubble, more activation memory ((2p − 1)/p as much)."""
    h1 = run(make_scenario, p, m, "zero-bubble", LONG, 16384).report
    h2 = run(make_scenario, p, m, "zb-h2", LONG, 16384).report
    assert h2.breakdown.compute_s == pytest.approx(h1.breakdown.compute_s, rel=1e-6)
    assert h2.breakdown.bubble_s < h1.breakdown.bubble_s
    assert h2.step_time_s < h1.step_time_s
    act1, act2 = h1.memory_gib_per_gpu.activations, h2.memory_gib_per_gpu.activations
    # within 1%: a small part of the activation memory is held once, not per micro-batch in flight
    assert act2 == pytest.approx(act1 * (2 * p - 1) / p, rel=0.01)


def test_zb_h2_rejects_virtual_stages():
    with pytest.raises(InfeasibleConfig, match="virtual_stages"):
        ZB_H2.check(4, 8, 2)


# ------------------------------------------------------------------------------------- DeepSeek-V3 scenario
ROOT = Path(__file__).resolve().parent.parent
DEEPSEEK_V3 = ROOT / "scenarios/moe/deepseek-v3-2048xh800.yaml"


def test_deepseek_v3_scenario_reports_step_and_memory():
    """The shipped 2,048-H800 scenario runs its report's layout (PP 16 as a V of 32 virtual stages, EP 64,
    dp 128, ZeRO-1, FP8) and fits the H800's 80 GB; the all-to-all shows."""
    scenario = load_scenario(DEEPSEEK_V3)
    rep = simulate(scenario).report
    assert rep.gpus == 2048
    lay = rep.layout
    assert lay is not None
    assert (lay.tp, lay.pp, lay.dp, lay.ep, lay.zero) == (1, 16, 128, 64, 1)
    assert (lay.schedule, lay.virtual_stages) == ("dualpipev", 2)
    assert rep.step_time_s > 0 and rep.comm.ep_s > 0 and rep.breakdown.bubble_s > 0
    assert rep.fits_memory, rep.warnings
    assert 0 < rep.memory_gib_per_gpu.total <= 80
