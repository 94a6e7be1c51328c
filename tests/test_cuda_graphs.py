"""CUDA graphs (``framework.cuda_graph_scope``): kernels replayed from a graph launch nothing of their own, the
graph launches once (CUDA C++ Programming Guide, "CUDA Graphs"); ``full_iteration`` removes every per-kernel
launch. A launch-bound model shows it: its host-bound wait shrinks with each scope and vanishes under
``full_iteration``, while the GPU work stays the same."""

from __future__ import annotations

import pytest

from simulator.build.setup import Setup
from simulator.scenario import scenario_from_dict
from simulator.simulate import simulate
from simulator.topology.loader import build_cluster
from simulator.workload.steps import KernelStep

TINY = {"layers": 2, "hidden": 64, "heads": 2, "vocab": 128}
MOE = {"layers": 2, "hidden": 256, "heads": 4, "vocab": 512, "gated_mlp": True,
       "moe": {"experts": 16, "top_k": 2, "expert_ffn_hidden": 128}}  # fmt: skip


def _doc(make_doc, scope: list[str], model: dict = TINY, **kw) -> dict:  # type: ignore[type-arg]
    doc = make_doc(gpus_per_host=kw.pop("gpus", 1), model=model, seq_len=32, **kw)
    doc["cluster"]["topology"]["host"]["gpu"] = "h100-sxm"
    doc["framework"] = {"name": "megatron-core", "cuda_graph_scope": scope}
    return doc


def _launches(make_doc, scope: list[str], model: dict = TINY, **kw) -> tuple[float, int]:  # type: ignore[type-arg]
    """(host launch seconds, kernels) of one layer's forward and backward."""
    sc = scenario_from_dict(_doc(make_doc, scope, model, **kw))
    lb = Setup(sc, build_cluster(sc.topology, file="<test>"), "symmetric").workload.layer_builder
    moe = sc.model.moe is not None
    ks = [s for s in [*lb.forward(moe), *lb.backward(1.0, moe)] if isinstance(s, KernelStep)]
    return sum(k.time.launch_s for k in ks), len(ks)


def test_an_attention_graph_launches_once_per_pass(make_doc) -> None:
    none, kernels = _launches(make_doc, [])
    attn, _ = _launches(make_doc, ["attn"])
    launch = none / kernels  # every kernel launches once without graphs
    sc = scenario_from_dict(_doc(make_doc, []))
    lb = Setup(sc, build_cluster(sc.topology, file="<test>"), "symmetric").workload.layer_builder
    steps = [*lb.attention_block_forward(), *lb.attention_block_backward()]
    n_attn = sum(isinstance(s, KernelStep) for s in steps)
    # the attention block's kernels collapse into one graph launch forward and one backward
    assert attn == pytest.approx(none - (n_attn - 2) * launch)


def test_moe_router_and_preprocess_graphs_cover_only_their_kernels(make_doc) -> None:
    none, _ = _launches(make_doc, [], MOE, gpus=8, parallelism__ep=8)
    router, _ = _launches(make_doc, ["moe_router"], MOE, gpus=8, parallelism__ep=8)
    both, _ = _launches(make_doc, ["moe_router", "moe_preprocess"], MOE, gpus=8, parallelism__ep=8)
    assert none > router > both > 0  # the experts' per-expert GEMMs still launch one by one


def test_full_iteration_graphs_remove_the_host_bound_wait(make_doc) -> None:
    eager = simulate(scenario_from_dict(_doc(make_doc, []))).report
    graphed = simulate(scenario_from_dict(_doc(make_doc, ["full_iteration"]))).report
    assert eager.kernel_classes.host_bound_s > 0
    assert graphed.kernel_classes.host_bound_s == 0.0
    assert graphed.kernel_classes.gemm_s == pytest.approx(eager.kernel_classes.gemm_s, rel=1e-9)
    assert graphed.step_time_s < eager.step_time_s
