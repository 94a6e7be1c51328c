"""Calibration profiles: the efficiencies of one GPU type, fitted by ``python -m simulator.calibrate``.

A profile holds only per-hardware constants (never per model or per scenario). Each file in
``simulator/hardware/calibration/`` names the data it was fitted on; a GPU type without measurements of its
own inherits another type's efficiencies (``inherits:``), and the report warns that it is uncalibrated.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cache
from importlib import resources
from typing import Any

import yaml

from simulator.errors import ScenarioError


@dataclass(frozen=True)
class GemmCalibration:
    """Tensor-core GEMM efficiency model (see ``compute.py``)."""

    max_efficiency: float  # fraction of dense peak reached by large, well-shaped GEMMs (measured)
    tile_m: int  # output tile of the kernels cuBLAS picks for large GEMMs (CUTLASS default shapes)
    tile_n: int
    tile_k: int  # K-depth of one main-loop iteration
    k_overhead_tiles: float  # prologue/epilogue cost of one output tile, in main-loop iterations (fitted)
    # fraction of the FP8 peak reached by large FP8 linear-layer GEMMs in training (fitted per GPU type on FP8
    # runs by ``python -m simulator.calibrate fp8``); None: the BF16 efficiency times the measured ratio
    fp8_max_efficiency: float | None = None


@dataclass(frozen=True)
class AttentionCalibration:
    """Fused (flash) attention kernel efficiency, fraction of dense peak (measured or fitted)."""

    flash_forward_efficiency: float
    flash_backward_efficiency: float


@dataclass(frozen=True)
class ComputeCalibration:
    """Every efficiency constant of one GPU type's compute model."""

    gpu: str
    gemm: GemmCalibration
    attention: AttentionCalibration
    memory_efficiency: float  # fraction of HBM bandwidth reached by streaming element-wise kernels
    kernel_gap_s: float  # GPU idle gap between back-to-back dependent kernels on one stream
    inherited_from: str | None = None
    # the GPU whose end-to-end fit this profile's GEMM constants were transferred from through kernel tables
    # (``python -m simulator.calibrate transfer``): no end-to-end fit of its own
    transferred_from: str | None = None
    # sustained tensor-core clock relative to the profile the efficiencies were measured on (a power limit below
    # the reference GPU's: compute-bound kernels slow by this factor, memory-bound ones do not)
    clock_scale: float = 1.0
    fitted_on: tuple[str, ...] = ()
    sources: dict[str, str] = field(default_factory=dict)


def _from_doc(gpu: str, doc: dict[str, Any]) -> ComputeCalibration:
    return ComputeCalibration(
        gpu=gpu,
        gemm=GemmCalibration(**doc["gemm"]),
        attention=AttentionCalibration(**doc["attention"]),
        memory_efficiency=float(doc["memory_efficiency"]),
        kernel_gap_s=float(doc["kernel_gap_us"]) * 1e-6,
        fitted_on=tuple(doc.get("fitted_on", ())),
        sources=dict(doc.get("sources", {})),
        transferred_from=doc.get("transferred_from", {}).get("reference"),
    )


def _read(gpu: str) -> dict[str, Any] | None:
    folder = resources.files("simulator.hardware").joinpath("calibration")
    path = folder.joinpath(f"{gpu}.yaml")
    if not path.is_file():
        return None
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


@cache
def compute_calibration(gpu: str) -> ComputeCalibration:
    """The calibration profile of GPU type ``gpu`` (following ``inherits:`` when it has no data of its own)."""
    doc = _read(gpu)
    if doc is None:
        raise ScenarioError(f"no calibration profile for GPU {gpu!r}", field="gpu")
    parent = doc.get("inherits")
    if parent:
        base = compute_calibration(parent)
        clock = float(doc.get("power_limit", {}).get("clock_scale", 1.0))
        return replace(base, gpu=gpu, inherited_from=base.inherited_from or parent, clock_scale=clock)
    return _from_doc(gpu, doc)


@dataclass(frozen=True)
class LinkCalibration:
    """Achieved fraction of a link type's line rate per protocol, and per-step latency of collectives."""

    efficiency: dict[str, dict[str, float]]  # link_type → {efficiency_key ("ring", "nvls", "p2p") → fraction}
    step_latency_s: dict[str, float]  # link_type → α per algorithm step crossing such a link
    default_efficiency: float
    default_step_latency_s: float
    fitted_on: tuple[str, ...] = ()
    base_latency_s: dict[str, float] = field(default_factory=dict)  # algorithm → fixed cost per collective

    def link_efficiency(self, link_type: str, key: str) -> float:
        """Fraction of line rate a collective using protocol ``key`` reaches on ``link_type``."""
        per = self.efficiency.get(link_type)
        if per is None:
            return self.default_efficiency
        return per.get(key, per.get("ring", self.default_efficiency))

    def base_latency(self, algorithm: str) -> float:
        """Fixed cost of launching one collective with ``algorithm``, seconds."""
        return self.base_latency_s.get(algorithm, 0.0)

    def step_latency(self, link_type: str) -> float:
        """α of one algorithm step over a link of ``link_type``, seconds."""
        return self.step_latency_s.get(link_type, self.default_step_latency_s)


@cache
def link_calibration() -> LinkCalibration:
    """The calibrated link efficiencies and latencies (``calibration/links.yaml``)."""
    folder = resources.files("simulator.hardware").joinpath("calibration")
    doc = yaml.safe_load(folder.joinpath("links.yaml").read_text())
    return LinkCalibration(
        efficiency={k: dict(v) for k, v in doc["efficiency"].items()},
        step_latency_s={k: float(v) * 1e-6 for k, v in doc["step_latency_us"].items()},
        default_efficiency=float(doc["default_efficiency"]),
        default_step_latency_s=float(doc["default_step_latency_us"]) * 1e-6,
        fitted_on=tuple(doc.get("fitted_on", ())),
        base_latency_s={k: float(v) * 1e-6 for k, v in doc.get("base_latency_us", {}).items()},
    )
