"""What a framework keeps for backward changes activation memory by closed-form amounts: Transformer Engine
keeps each linear layer's FP8-quantised input (1 byte per element instead of 2: the QKV, FC1 and FC2 inputs
of a layer, and each routed copy's expert input), and Megatron-Core (>= 0.13) applies the routing weights
inside the experts' activation, so it keeps no expert outputs for their gradient."""

from __future__ import annotations

import pytest

from simulator.build.memory import layer_activation_bytes
from simulator.build.setup import Setup
from simulator.scenario import scenario_from_dict
from simulator.topology.loader import build_cluster

DENSE = {"layers": 2, "hidden": 1024, "heads": 16, "ffn_hidden": 4096, "vocab": 1024}
MOE = {"layers": 2, "hidden": 512, "heads": 8, "vocab": 1024, "gated_mlp": True,
       "moe": {"experts": 8, "top_k": 2, "expert_ffn_hidden": 256}}  # fmt: skip


def _ctx(make_doc, model: dict, precision: str, framework: str, **kw):  # type: ignore[no-untyped-def,type-arg]
    doc = make_doc(gpus_per_host=8, model=model, seq_len=512, **kw)
    doc["cluster"]["topology"]["host"]["gpu"] = "h100-sxm"
    doc["training"]["precision"] = precision
    doc["framework"] = {"name": framework}
    sc = scenario_from_dict(doc)
    return Setup(sc, build_cluster(sc.topology, file="<test>"), "symmetric").ctx


def test_te_keeps_fp8_linear_inputs(make_doc) -> None:  # type: ignore[no-untyped-def]
    bf16 = _ctx(make_doc, DENSE, "bf16", "megatron-core")
    fp8 = _ctx(make_doc, DENSE, "fp8", "megatron-core")
    tokens, h, f = bf16.tokens, DENSE["hidden"], DENSE["ffn_hidden"]
    # QKV and FC1 inputs (h each) and the FC2 input (f): one byte less per element
    saved = layer_activation_bytes(bf16, False) - layer_activation_bytes(fp8, False)
    assert saved == pytest.approx(tokens * (2 * h + f))
    # a framework that keeps the 16-bit inputs (torchao float8 by default) saves nothing
    titan = _ctx(make_doc, DENSE, "fp8", "torchtitan")
    assert layer_activation_bytes(titan, False) == pytest.approx(layer_activation_bytes(bf16, False))


def test_routing_weights_in_the_activation_keep_no_expert_outputs(make_doc) -> None:  # type: ignore[no-untyped-def]
    mcore = _ctx(make_doc, MOE, "bf16", "megatron-core", parallelism__ep=8)
    titan = _ctx(make_doc, MOE, "bf16", "torchtitan", parallelism__ep=8)
    routed = mcore.moe_tokens * MOE["moe"]["top_k"]
    kept = layer_activation_bytes(titan, True) - layer_activation_bytes(mcore, True)
    assert kept == pytest.approx(2 * routed * MOE["hidden"])  # the expert outputs, 2 bytes per element
