"""Megatron-Core's expert-parallel overlap (``parallelism.moe_a2a_overlap``: the combined 1F1B schedule) and
DualPipe's overlapped pairs: a steady-state forward runs merged with the next backward, each one's all-to-alls
under the other's compute (``build/program_builder.py`` ``_pair``; ``parallel/schedules/base.py``)."""

from __future__ import annotations

import pytest

from simulator.parallel.schedules.base import Pass, Task, pair_steady_state
from simulator.scenario import scenario_from_dict
from simulator.simulate import simulate

MOE = {"layers": 4, "hidden": 1024, "heads": 16, "ffn_hidden": 2048, "vocab": 4096, "gated_mlp": True,
       "moe": {"experts": 16, "top_k": 2, "expert_ffn_hidden": 1024}}  # fmt: skip


def test_combined_1f1b_adds_a_warmup_forward_and_pairs_the_steady_state():
    """Megatron-Core's combined 1F1B without pipelining: F0, then F1 with B0, F2 with B1, then B2 alone
    (combined_1f1b_schedule_for_no_pipelining); with a warm-up (F0 | F1 B0 F2 B1 F3 B2 | B3) one more forward
    goes first (F0 F1 | F2 with B0, F3 with B1 | B2 B3). A forward is never merged with its own backward."""
    one = pair_steady_state([Task(Pass.F, 0), Task(Pass.B, 0), Task(Pass.F, 1), Task(Pass.B, 1),
                             Task(Pass.F, 2), Task(Pass.B, 2)])  # fmt: skip
    assert [(t.kind.value, t.mb, t.paired) for t in one] == [
        ("F", 0, False), ("F", 1, True), ("B", 0, False), ("F", 2, True), ("B", 1, False), ("B", 2, False)]
    warm = pair_steady_state([Task(Pass.F, 0), Task(Pass.F, 1), Task(Pass.B, 0), Task(Pass.F, 2), Task(Pass.B, 1),
                              Task(Pass.F, 3), Task(Pass.B, 2), Task(Pass.B, 3)])  # fmt: skip
    assert [(t.kind.value, t.mb, t.paired) for t in warm] == [
        ("F", 0, False), ("F", 1, False), ("F", 2, True), ("B", 0, False), ("F", 3, True), ("B", 1, False),
        ("B", 2, False), ("B", 3, False)]
    assert not any(t.paired for t in pair_steady_state([Task(Pass.F, 0), Task(Pass.B, 0)]))


def _report(make_doc, overlap: bool, **kw):
    kw = {"pp": 2, **kw}
    doc = make_doc(gpus_per_host=8, nodes=2, model=MOE, micro_batches=8, seq_len=1024,
                   parallelism__ep=8, parallelism__moe_a2a_overlap=overlap, **kw)  # fmt: skip
    return simulate(scenario_from_dict(doc)).report


@pytest.mark.parametrize("schedule", [{"pp": 1}, {"schedule": "interleaved", "virtual_stages": 2}])
def test_overlap_hides_all_to_alls_and_changes_no_work(make_doc, schedule):
    """The same kernels and collectives run (compute and communication per kind equal), but the merged pairs'
    all-to-alls run under compute: less EP time exposed, a shorter step; no unmodelled-setting warning."""
    plain, merged = _report(make_doc, False, **schedule), _report(make_doc, True, **schedule)
    assert merged.kernel_classes.compute_s() == pytest.approx(plain.kernel_classes.compute_s(), rel=1e-9)
    assert merged.comm.ep_s == pytest.approx(plain.comm.ep_s, rel=0.05)
    assert merged.exposed_comm.ep_s < 0.8 * plain.exposed_comm.ep_s
    assert merged.step_time_s < plain.step_time_s
    assert merged.model_tflops_per_gpu > plain.model_tflops_per_gpu
    assert not any("moe_a2a_overlap" in w for w in merged.warnings)


def test_plain_pipelined_1f1b_is_not_merged_and_says_so(make_doc):
    """Megatron-Core has no combined 1F1B for a pipelined schedule without virtual stages: nothing changes, and
    the report names the setting as not modelled."""
    plain, flagged = _report(make_doc, False), _report(make_doc, True)
    assert flagged.step_time_s == plain.step_time_s
    assert any("moe_a2a_overlap with the 1f1b schedule" in w for w in flagged.warnings)


def test_dense_models_and_single_stage_runs_are_unchanged(make_doc):
    """Nothing to overlap without expert parallelism: the flag changes nothing on a dense model."""
    dense = {k: v for k, v in MOE.items() if k != "moe"}
    a = simulate(scenario_from_dict(make_doc(gpus_per_host=8, nodes=2, model=dense, pp=2, micro_batches=8))).report
    b = simulate(scenario_from_dict(make_doc(gpus_per_host=8, nodes=2, model=dense, pp=2, micro_batches=8,
                                             parallelism__moe_a2a_overlap=True))).report  # fmt: skip
    assert a.step_time_s == b.step_time_s
