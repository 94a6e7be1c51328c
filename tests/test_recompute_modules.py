"""Megatron-Core's ``--recompute-modules`` (selective recomputation of named modules): each module frees the
activations it would have kept and runs its forward again in the backward pass. Checked against the
activation terms it drops (Korthikanti et al. 2022's per-layer accounting, ``build/memory.py``) and the
kernels it adds; and the run names what it still does not model."""

from __future__ import annotations

import pytest

from simulator.build.memory import layer_activation_bytes
from simulator.build.setup import Setup
from simulator.scenario import scenario_from_dict
from simulator.simulate import simulate
from simulator.topology.loader import build_cluster

MOE = {"layers": 2, "hidden": 512, "heads": 8, "vocab": 1024, "gated_mlp": True,
       "moe": {"experts": 8, "top_k": 2, "expert_ffn_hidden": 256}}  # fmt: skip


def _setup(make_doc, modules: list[str] | None) -> Setup:  # type: ignore[no-untyped-def]
    doc = make_doc(gpus_per_host=8, model=MOE, seq_len=512, parallelism__ep=8)
    if modules is not None:
        doc["training"].update(recompute="selective", recompute_modules=modules)
    sc = scenario_from_dict(doc)
    return Setup(sc, build_cluster(sc.topology, file="<test>"), "symmetric")


def test_each_module_frees_what_it_recomputes(make_doc) -> None:  # type: ignore[no-untyped-def]
    base = _setup(make_doc, None)
    tokens, h, w = base.ctx.tokens, MOE["hidden"], MOE["moe"]["expert_ffn_hidden"]
    routed = base.ctx.moe_tokens * MOE["moe"]["top_k"]
    full = layer_activation_bytes(base.ctx, True)
    # the two norm outputs (QKV and FC1 inputs), 2 bytes per element each
    assert full - layer_activation_bytes(_setup(make_doc, ["layernorm"]).ctx, True) == pytest.approx(4 * tokens * h)
    # the experts' activation output (FC2's input), 2 bytes per routed copy and element
    assert full - layer_activation_bytes(_setup(make_doc, ["moe_act"]).ctx, True) == pytest.approx(2 * routed * w)
    both = layer_activation_bytes(_setup(make_doc, ["layernorm", "moe_act"]).ctx, True)
    assert full - both == pytest.approx(4 * tokens * h + 2 * routed * w)


def test_recomputed_modules_run_again_in_the_backward(make_doc) -> None:  # type: ignore[no-untyped-def]
    lb = _setup(make_doc, ["layernorm", "moe_act"]).workload.layer_builder
    names = [s.name for s in lb.recompute("selective", moe=True)]
    assert names == ["re.attn_norm", "re.mlp_norm", "re.expert_activation"]
    assert all(s.model_flops == 0 for s in lb.recompute("selective", moe=True))  # not model work
    whole = [s.name for s in _setup(make_doc, ["moe"]).workload.layer_builder.recompute("selective", moe=True)]
    assert "re.moe_dispatch" in whole and "re.expert_fc1" in whole  # the block again, its all-to-alls too


def test_recomputing_costs_time_and_saves_memory(make_doc) -> None:  # type: ignore[no-untyped-def]
    doc = make_doc(gpus_per_host=8, model=MOE, seq_len=512, parallelism__ep=8)
    plain = simulate(scenario_from_dict(doc)).report
    doc["training"].update(recompute="selective", recompute_modules=["layernorm", "moe_act"])
    again = simulate(scenario_from_dict(doc)).report
    assert again.memory_gib_per_gpu.activations < plain.memory_gib_per_gpu.activations
    assert again.step_time_s > plain.step_time_s
    assert not any("recorded but not modelled" in w for w in again.warnings)


def test_what_is_not_modelled_is_said(make_doc) -> None:  # type: ignore[no-untyped-def]
    """The all-gather dispatcher is recorded but runs as all-to-all, and the report says so; the flex ones
    (deepep, hybridep) are modelled (tests/test_flex_dispatcher.py) and draw no such warning."""
    doc = make_doc(gpus_per_host=8, model=MOE, seq_len=512, parallelism__ep=8, parallelism__moe_dispatcher="allgather")
    warnings = simulate(scenario_from_dict(doc)).report.warnings
    assert any(w.startswith("recorded but not modelled: parallelism.moe_dispatcher=allgather") for w in warnings)


DENSE = {"layers": 2, "hidden": 1024, "heads": 16, "kv_heads": 4, "ffn_hidden": 2816, "vocab": 1024,
         "gated_mlp": True}  # fmt: skip


def test_torchtitan_op_level_checkpointing_keeps_every_second_matmul(make_doc) -> None:  # type: ignore[no-untyped-def]
    """Per-op SAC (torchtitan ``_save_list``): a dense layer keeps its input and the outputs of wq, wv, w1, w2
    and of the attention kernel (with its fp32 log-sum-exp); wk, wo, w3, the norms, rotary and the activation
    run again in backward."""
    doc = make_doc(gpus_per_host=1, model=DENSE, seq_len=512)
    doc["framework"] = {"name": "torchtitan"}
    doc["training"].update(recompute="selective", selective_recompute="op_level")
    sc = scenario_from_dict(doc)
    setup = Setup(sc, build_cluster(sc.topology, file="<test>"), "symmetric")
    tokens, h, q, kv, f, heads = setup.ctx.tokens, 1024, 1024, 256, 2816, 16
    expected = 2 * tokens * (h + q + kv + q + f + h) + 4 * heads * tokens
    assert layer_activation_bytes(setup.ctx, False) == pytest.approx(expected)
    names = [s.name for s in setup.workload.layer_builder.recompute("selective")]
    assert names == ["re.attn_norm", "re.wk", "re.rotary", "re.attn_proj", "re.mlp_norm", "re.w3", "re.activation"]
