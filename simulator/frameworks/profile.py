"""A framework profile: the kernels a training framework launches for the element-wise parts of a layer, and
the attention implementation it calls, as mechanisms (kernel counts and HBM bytes), never as a fitted speed-up.

Each profile is one YAML file in ``profiles/`` (one per framework and execution mode), registered by its file
name: ``megatron-core`` (Transformer Engine fused kernels), ``torchtitan`` (eager PyTorch),
``torchtitan-compile`` (torch.compile / Inductor), ``llm-foundry``, ``deepspeed``. A new framework is one file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import yaml

from simulator.errors import ScenarioError


@dataclass(frozen=True)
class OpKernels:
    """How one element-wise op runs: kernel launches, and HBM traffic as a multiple of one fused kernel's."""

    kernels: int
    traffic: float
    backward_kernels: int
    backward_traffic: float


@dataclass(frozen=True)
class MoEKernels:
    """What the framework launches around a mixture-of-experts block: kernels of the router (GEMM aside), of
    the token permutation into expert order and of the per-expert sort, forward and backward, and how the
    grouped expert GEMMs launch (``per_expert``: one GEMM per local expert, ``single``: one grouped kernel)."""

    router: tuple[int, int] = (1, 1)
    permute: tuple[int, int] = (1, 1)
    sort: tuple[int, int] = (1, 1)
    grouped_gemm: str = "single"
    probs_in_activation: bool = False  # routing weights applied in the activation, not after the combine
    # dropless dispatch copies the tokens-per-expert counts to the host and waits for them (the all-to-all's
    # split sizes and the per-expert GEMMs' row counts are host-side arguments)
    dropless_host_sync: bool = False


@dataclass(frozen=True)
class FrameworkProfile:
    """The mechanisms of one framework in one execution mode."""

    name: str
    attention_impl: str  # fused attention implementation (hardware/attention.yaml)
    norm: OpKernels  # the norms of the layer
    activation: OpKernels  # the MLP activation (SwiGLU or GeLU)
    rotary: OpKernels | None  # rotary embedding of Q and K; None: the model family uses none (ALiBi)
    sources: dict[str, str]
    moe: MoEKernels = MoEKernels()
    # kernels launched to quantise one tensor to FP8, per scaling recipe (not listed: one)
    fp8_cast_kernels: dict[str, int] = field(default_factory=dict)

    fp8_saves_inputs: bool = False  # linear layers keep their FP8-quantised inputs for backward (1 B/element)
    # weight-gradient GEMMs add into the main-gradient buffer in their epilogue (Megatron's gradient-accumulation
    # fusion) instead of a separate main_grad.add_ kernel per micro-batch
    fused_grad_accumulation: bool = False
    kernel_launch_s: float = 0.0  # host seconds per kernel launch in this execution mode (host.yaml)
    # GEMM name (``build/layer.py``: qkv, attn_proj, fc1, fc2 and their _dgrad/_wgrad) → SMs taken by the
    # communication kernel that runs beside it under ``parallelism.tp_comm_overlap`` (the GEMM gets the rest)
    tp_overlap_sms: dict[str, int] = field(default_factory=dict)

    def cast_kernels(self, recipe: str) -> int:
        """Kernels per tensor quantised under ``recipe``."""
        return self.fp8_cast_kernels.get(recipe, 1)


def _ops(raw: dict[str, Any]) -> OpKernels:
    return OpKernels(
        int(raw["kernels"]), float(raw["traffic"]),
        int(raw["backward_kernels"]), float(raw["backward_traffic"]),
    )  # fmt: skip


@cache
def profile_names() -> tuple[str, ...]:
    """Every shipped profile."""
    folder = resources.files("simulator.frameworks").joinpath("profiles")
    return tuple(sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")))


@cache
def framework_profile(name: str) -> FrameworkProfile:
    """The profile called ``name``; an unknown name is a user error listing the valid ones."""
    if name not in profile_names():
        raise ScenarioError(
            f"no framework profile {name!r}; valid: {', '.join(profile_names())}", field="framework.name"
        )
    raw = yaml.safe_load(
        resources.files("simulator.frameworks").joinpath("profiles", f"{name}.yaml").read_text()
    )
    rotary, moe = raw.get("rotary"), raw.get("moe")
    return FrameworkProfile(
        name=name,
        attention_impl=str(raw["attention_impl"]),
        norm=_ops(raw["norm"]),
        activation=_ops(raw["activation"]),
        rotary=None if rotary is None else _ops(rotary),
        sources=dict(raw.get("sources", {})),
        moe=MoEKernels() if moe is None else _moe(moe),
        fp8_cast_kernels={str(k): int(v) for k, v in raw.get("fp8_cast_kernels", {}).items()},
        fp8_saves_inputs=bool(raw.get("fp8_saves_inputs", False)),
        fused_grad_accumulation=bool(raw.get("fused_grad_accumulation", False)),
        kernel_launch_s=host_costs()[name]["kernel_launch_us"] * 1e-6,
        tp_overlap_sms=_tp_overlap(raw.get("tp_comm_overlap", {})),
    )


def _tp_overlap(raw: dict[str, Any]) -> dict[str, int]:
    """``tp_comm_overlap`` of a profile file: per overlap method, its GEMMs and the SMs its communication
    kernel takes from them."""
    return {str(g): int(method["comm_sms"]) for method in raw.values() for g in method["gemms"]}


@cache
def host_costs() -> dict[str, dict[str, Any]]:
    """``host.yaml``: per profile, the host microseconds per kernel launch and their source."""
    raw = yaml.safe_load(resources.files("simulator.frameworks").joinpath("host.yaml").read_text())
    return {str(k): {**v, "kernel_launch_us": float(v["kernel_launch_us"])} for k, v in raw.items()}


def _moe(raw: dict[str, Any]) -> MoEKernels:
    grouped = str(raw["grouped_gemm"])
    if grouped not in ("per_expert", "single"):
        raise ValueError(f"moe.grouped_gemm {grouped!r}; valid: per_expert, single")

    def pair(key: str) -> tuple[int, int]:
        return int(raw[key]["kernels"]), int(raw[key]["backward_kernels"])

    return MoEKernels(
        pair("router"), pair("permute"), pair("sort"), grouped, bool(raw.get("probs_in_activation", False)),
        bool(raw.get("dropless_host_sync", False)),
    )  # fmt: skip


def profile_for(framework: str, compile: bool) -> FrameworkProfile:
    """The profile of ``framework`` in its execution mode (``compile``: torch.compile where it has one)."""
    name = f"{framework}-compile" if compile and f"{framework}-compile" in profile_names() else framework
    return framework_profile(name)
