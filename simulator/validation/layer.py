"""One transformer layer's forward and backward time, compared with Korthikanti et al. 2022, Table 4.

The measured layer is the 22B model's (hidden 6144, 64 heads, sequence 2048, micro-batch 4, TP 8, fp16 on a
DGX A100) under five recompute / sequence-parallel variants. We time the same layer with the same kernels
the full simulation uses (``LayerBuilder``), with its TP communication at the network model's uncontended
time on the shipped DGX A100 topology; "backward" includes the recomputation, as in the paper's table.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

from simulator.build.setup import Setup
from simulator.hardware.calibration import ComputeCalibration
from simulator.scenario import scenario_from_dict
from simulator.topology.loader import build_cluster
from simulator.workload.steps import FusedCompute, compile_steps

# Table 4's row labels → (recompute mode, sequence parallel)
VARIANTS = {
    "baseline (no recompute)": ("none", False),
    "sequence parallel": ("none", True),
    "full recompute": ("full", False),
    "selective recompute": ("selective", False),
    "selective recompute + sequence parallel": ("selective", True),
}


@dataclass(frozen=True)
class LayerCase:
    """One measured row: the variant and its forward/backward times."""

    config: str
    recompute: str
    sequence_parallel: bool
    forward_s: float
    backward_s: float


@cache
def _data() -> dict[str, Any]:
    text = resources.files("simulator.validation").joinpath("data/korthikanti-2022-layer.yaml").read_text()
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


def korthikanti_cases() -> list[LayerCase]:
    """The five measured variants of Korthikanti et al. 2022, Table 4."""
    out = []
    for row in _data()["rows"]:
        recompute, sp = VARIANTS[row["config"]]
        out.append(LayerCase(row["config"], recompute, sp, row["forward_ms"] / 1e3, row["backward_ms"] / 1e3))
    return out


def _scenario(case: LayerCase) -> dict[str, Any]:
    m = _data()["model"]
    return {
        "name": f"korthikanti-layer-{case.config}",
        # Megatron-LM's default dropout (0.1 hidden and attention), under which the paper measured
        "model": {"layers": 8, "hidden": m["hidden"], "heads": m["heads"], "vocab": 51200,
                  "hidden_dropout": 0.1, "attention_dropout": 0.1},
        "cluster": {"topology": "dgx-a100", "nodes": 1},
        "training": {
            "seq_len": m["seq_len"],
            "global_batch": m["micro_batch"],
            "micro_batch": m["micro_batch"],
            "precision": "fp16",
            "recompute": case.recompute,
            "flash_attention": False,
        },  # fmt: skip
        # fp16 Megatron-LM of 2022: gradient-accumulation fusion came to fp16 with 07916bf2 (2022-09-27)
        "framework": {"name": "megatron-core", "gradient_accumulation_fusion": False},
        "parallelism": {"tp": m["tp"], "sequence_parallel": case.sequence_parallel},
    }


def layer_times(case: LayerCase, calibration: ComputeCalibration | None = None) -> tuple[float, float]:
    """Simulated (forward, backward incl. recomputation) seconds of one layer for ``case``."""
    scenario = scenario_from_dict(_scenario(case))
    setup = Setup(
        scenario, build_cluster(scenario.topology, file=scenario.topology_file), "symmetric", calibration
    )
    lb, inline = setup.workload.layer_builder, setup.inline_comm
    assert inline is not None, "the measured layer's TP group is one DGX host"
    per_layer = setup.workload.layer_params(0)
    fwd = compile_steps(lb.forward(), False, inline)
    bwd = compile_steps(lb.recompute(case.recompute) + lb.backward(per_layer), False, inline)
    return _duration(fwd), _duration(bwd)


def _duration(steps: tuple[object, ...]) -> float:
    return sum(s.duration_s for s in steps if isinstance(s, FusedCompute))
