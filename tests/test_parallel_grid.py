"""Every combination of the parallelism options on a small model runs, or is rejected with a one-line
``InfeasibleConfig`` naming its field: never a traceback. And every communication-overlap option, turned
on, never makes a step slower; tensor-parallel overlap hides TP time without touching compute."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_symmetry import assert_same_step

from simulator.errors import InfeasibleConfig
from simulator.hardware.gpu import get_gpu
from simulator.report.schema import StepReport
from simulator.scenario import scenario_from_dict
from simulator.simulate import simulate

DENSE = {"layers": 8, "hidden": 256, "heads": 8, "vocab": 1024}
MOE = {**DENSE, "kv_heads": 4, "gated_mlp": True, "moe": {"experts": 4, "top_k": 2, "shared_experts": 1}}
SCHEDULES = ("gpipe", "1f1b", "interleaved", "zero-bubble")
RECOMPUTE = ("none", "selective", "full")


def run(make_doc, **kw) -> StepReport | InfeasibleConfig:
    """The report, or the infeasibility the scenario was rejected with."""
    try:
        return simulate(scenario_from_dict(make_doc(**kw))).report
    except InfeasibleConfig as e:
        return e


def check(result: StepReport | InfeasibleConfig) -> None:
    """A report whose breakdown adds up, or a one-line reason naming a scenario field."""
    if isinstance(result, InfeasibleConfig):
        assert result.field and "\n" not in str(result), str(result)
        return
    b = result.breakdown
    assert result.step_time_s > 0 and result.memory_gib_per_gpu.total > 0
    total = b.compute_s + b.exposed_comm_s + b.bubble_s + b.other_s
    assert total == pytest.approx(result.step_time_s, rel=1e-9)
    assert min(b.compute_s, b.exposed_comm_s, b.overlapped_comm_s, b.bubble_s, b.other_s) >= 0


GRID = list(itertools.product(range(4), (False, True), SCHEDULES, RECOMPUTE, ("dense", "moe")))


@pytest.mark.parametrize("zero,sp,schedule,recompute,model", GRID)
def test_grid_runs_or_is_rejected(make_doc, zero, sp, schedule, recompute, model):
    """zero 0-3 × sequence parallelism × schedule × recompute, dense and MoE (ep 2), on 8 GPUs with
    tp 2, pp 2, dp 2 and 4 micro-batches."""
    moe = model == "moe"
    result = run(
        make_doc, gpus_per_host=8, model=MOE if moe else DENSE, tp=2, pp=2, micro_batches=4, zero=zero,
        schedule=schedule, virtual_stages=2 if schedule == "interleaved" else 1,
        parallelism__sequence_parallel=sp, parallelism__ep=2 if moe else 1, training__recompute=recompute,
    )  # fmt: skip
    check(result)
    assert isinstance(result, StepReport), str(result)
    if moe:
        assert result.comm.ep_s > 0


options = st.fixed_dictionaries(
    {
        "zero": st.integers(0, 3),
        "parallelism__sequence_parallel": st.booleans(),
        "parallelism__tp_comm_overlap": st.booleans(),
        "parallelism__dp_overlap": st.booleans(),
        "parallelism__param_gather_overlap": st.booleans(),
        "parallelism__cp": st.sampled_from([1, 2]),
        "parallelism__cp_algorithm": st.sampled_from(["ring", "all_gather"]),
        "training__flash_attention": st.booleans(),
        "schedule": st.sampled_from(SCHEDULES),
        "training__recompute": st.sampled_from(RECOMPUTE),
    }
)


@settings(max_examples=40, deadline=None)
@given(opts=options, moe=st.booleans())
def test_option_combinations_never_crash(make_doc, opts, moe):
    """Overlap options, context parallelism and flash attention on top of the grid: some are infeasible
    (TP overlap without SP, context parallelism without flash attention), none crash."""
    result = run(
        make_doc, gpus_per_host=8, model=MOE if moe else DENSE, tp=2, pp=2, micro_batches=4,
        virtual_stages=2 if opts["schedule"] == "interleaved" else 1, parallelism__ep=2 if moe else 1, **opts,
    )  # fmt: skip
    check(result)
    if opts["parallelism__tp_comm_overlap"] and not opts["parallelism__sequence_parallel"]:
        assert isinstance(result, InfeasibleConfig)


# ------------------------------------------------------------------------------------ overlap options
layouts = st.fixed_dictionaries(
    {
        "tp_pp": st.sampled_from([(1, 1), (2, 1), (4, 1), (1, 2), (2, 2)]),
        "zero": st.integers(0, 3),
        "micro_batches": st.integers(1, 4),
        "schedule": st.sampled_from(["1f1b", "gpipe", "zero-bubble"]),
        "nodes": st.sampled_from([1, 2]),
    }
)
OVERLAPS = ("dp_overlap", "param_gather_overlap", "tp_comm_overlap")


@settings(max_examples=25, deadline=None)
@given(layout=layouts, moe=st.booleans())
def test_overlap_never_slows_a_step(make_doc, layout, moe):
    """Each overlap option on vs off, everything else equal (sequence parallelism on, as TP overlap needs):
    the step is never slower; TP overlap leaves compute as it was and exposes no more TP time. (Layers of
    ~12M parameters: each 25 MB gradient bucket then has backward compute to hide under; on a toy model
    whose whole gradient fits one bucket, bucketing only adds a collective's latency, as in PyTorch DDP.)"""
    layout = dict(layout)
    layout["tp"], layout["pp"] = layout.pop("tp_pp")
    dp = 4 * layout["nodes"] // (layout["tp"] * layout["pp"])
    model = dict(MOE if moe else DENSE, hidden=1024, heads=16)
    base = dict(
        gpus_per_host=4, model=model, seq_len=512, parallelism__sequence_parallel=True,
        parallelism__ep=2 if moe and dp % 2 == 0 else 1, **{f"parallelism__{o}": False for o in OVERLAPS},
        **layout,
    )  # fmt: skip
    for option in OVERLAPS:
        off = run(make_doc, **base)
        on = run(make_doc, **{**base, f"parallelism__{option}": True})
        assert isinstance(off, StepReport) and isinstance(on, StepReport)
        assert on.step_time_s <= off.step_time_s * (1 + 1e-9), option
        if option == "tp_comm_overlap":  # the kernels' own time; waiting for the host may grow as waits shrink
            assert _kernels_s(on) == pytest.approx(_kernels_s(off), rel=1e-9)
            assert on.exposed_comm.tp_s <= off.exposed_comm.tp_s + 1e-12


def _kernels_s(report: StepReport) -> float:
    """Compute time less the GPU's waits for the host: hiding communication shortens the GPU's work between two
    launches, so a launch-bound run may wait for the host longer (workload/steps.py), the kernels take as long."""
    return report.breakdown.compute_s - report.kernel_classes.host_bound_s


@pytest.mark.parametrize("fuse", [True, False])
def test_tp_comm_overlap_hides_tensor_parallel_time(make_doc, fuse):
    """tp 4 with sequence parallelism: TP overlap hides most of the exposed TP time (each collective runs
    under the GEMM that produces or consumes it), the step gets shorter; the same whether TP collectives are
    folded into compute ops or run by the engine. The kernels take longer, by no more than the GEMMs that lend
    16 SMs to Transformer Engine's overlap kernels would (tests/test_tp_overlap_sms.py)."""
    base = dict(
        gpus_per_host=4, model={**DENSE, "hidden": 2048, "heads": 16}, tp=4, micro_batches=2, seq_len=2048,
        parallelism__sequence_parallel=True, engine__fuse_local_comm=fuse,
    )  # fmt: skip
    off = run(make_doc, **base)
    on = run(make_doc, **base, parallelism__tp_comm_overlap=True)
    assert isinstance(off, StepReport) and isinstance(on, StepReport)
    sms = get_gpu(scenario_from_dict(make_doc(**base)).topology["host"]["gpu"]).sm_count
    assert _kernels_s(off) < _kernels_s(on) <= _kernels_s(off) * sms / (sms - 16) * (1 + 1e-9)
    assert on.exposed_comm.tp_s < 0.5 * off.exposed_comm.tp_s
    assert on.comm.tp_s == pytest.approx(off.comm.tp_s, rel=1e-6)
    assert on.step_time_s < off.step_time_s - 0.5 * (off.exposed_comm.tp_s - on.exposed_comm.tp_s)


@settings(max_examples=15, deadline=None)
@given(
    zero=st.integers(0, 3),
    schedule=st.sampled_from(["1f1b", "zero-bubble"]),
    moe=st.booleans(),
    sp=st.booleans(),
    skew=st.sampled_from([0.0, 1.5]),
)
def test_symmetric_and_full_agree_on_new_parallelisms(make_scenario, zero, schedule, moe, sp, skew):
    """ZeRO-3 gathers, expert all-to-alls over ep groups, expert gradients over edp groups and zero-bubble
    W passes give the same step whether one rank per stage or every rank is simulated."""
    kw = dict(
        gpus_per_host=4, nodes=2, model=MOE if moe else DENSE, tp=2, pp=2, micro_batches=3, zero=zero,
        schedule=schedule, parallelism__sequence_parallel=sp, parallelism__ep=2 if moe else 1,
        training__expert_load={"distribution": "zipf", "skew": skew},
    )  # fmt: skip
    sym = simulate(make_scenario(**kw), mode="symmetric").report
    full = simulate(make_scenario(**kw), mode="full").report
    assert_same_step(sym, full)
