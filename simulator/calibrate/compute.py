"""Fit the compute-model constants of each GPU type on published measured runs.

Only per-hardware constants are fitted, each within physical bounds:

* ``gemm.max_efficiency``: the efficiency of large GEMMs in training (at most the best measured square
  GEMM of the GPU — 85.9% on A100, 80.1% on H100, stas00/ml-engineering);
* ``gemm.k_overhead_tiles``: the fixed prologue/epilogue cost of a GEMM tile, in main-loop iterations;
The host time per kernel launch is the framework's (``simulator/frameworks/host.yaml``, fitted by
``python -m simulator.calibrate host``), not the GPU's; the GPU-side gap between kernels is a measurement.
Attention kernels keep their published efficiencies (FlashAttention-2 on A100, FlashAttention-3 on H100).

Fitted by minimising the mean squared log error of the step times of the suites marked ``fit`` in
``simulator/validation/suites.yaml`` (the rows listed in ``fit_rows``; the suite's other rows and every other
suite stay held out), plus, for the A100, the layer times of Korthikanti et al. 2022 Table 4.
Run ``python -m simulator.calibrate compute``; it rewrites ``simulator/hardware/calibration/<gpu>.yaml``.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.optimize import minimize

from simulator.hardware.calibration import (
    AttentionCalibration,
    ComputeCalibration,
    GemmCalibration,
    compute_calibration,
)
from simulator.validation.layer import korthikanti_cases, layer_times
from simulator.validation.suites import run_rows, suite_rows

CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "hardware" / "calibration"
# FlashAttention-2 on A100 (Dao 2023, Sec. 4.1): up to 73% of peak forward, up to 63% backward
FA2_FORWARD, FA2_BACKWARD = 0.73, 0.63
# FlashAttention-3 on H100 (Shah et al. 2024, Fig. 5): ~600 TFLOP/s forward at head dim 128, causal, 4k-8k
FA3_FORWARD = 0.61
# Back-to-back small PyTorch kernels run 1.1-1.3 us apart (pytorch/pytorch issue #161104)
KERNEL_GAP_S = 1.2e-6


@dataclass(frozen=True)
class FitSpec:
    """What one GPU type is fitted on, and the constants that are not fitted (with their sources)."""

    gpu: str
    suites: tuple[str, ...]
    with_layer: bool
    fit_attention: bool
    base: ComputeCalibration
    max_gemm_efficiency: float
    sources: dict[str, str]


def _base(gpu: str, max_eff: float, mem_eff: float, flash: tuple[float, float]) -> ComputeCalibration:
    return ComputeCalibration(
        gpu=gpu,
        gemm=GemmCalibration(max_efficiency=max_eff, tile_m=128, tile_n=256, tile_k=64, k_overhead_tiles=3.0),
        attention=AttentionCalibration(*flash),
        memory_efficiency=mem_eff,
        kernel_gap_s=KERNEL_GAP_S,
    )


SPECS = {
    "a100-sxm-80gb": FitSpec(
        "a100-sxm-80gb", ("megatron-2021-a100",), True, False,
        _base("a100-sxm-80gb", 0.859, 0.88, (FA2_FORWARD, FA2_BACKWARD)), 0.859,
        {
            "gemm.max_efficiency (bound)": "267.9 of 312 TFLOP/s, best bf16 matmul (stas00/ml-engineering)",
            "gemm.tile": "CUTLASS default SM80 fp16/bf16 threadblock tile 128x256x64",
            "kernel_gap_us": "1.1-1.3 us between back-to-back PyTorch kernels (pytorch/pytorch issue #161104)",
            "memory_efficiency": "1.80 of 2.04 TB/s read kernel, Nsight-confirmed (NVIDIA developer forums)",
            "attention": "FlashAttention-2 on A100: 73% forward, 63% backward of peak (Dao 2023, Sec. 4.1)",
        },
    ),
    "h100-sxm": FitSpec(
        "h100-sxm", ("megatron-readme-h100",), False, False,
        _base("h100-sxm", 0.801, 0.90, (FA3_FORWARD, FA3_FORWARD * FA2_BACKWARD / FA2_FORWARD)), 0.801,
        {
            "gemm.max_efficiency (bound)": "792.1 of 989.4 TFLOP/s, best bf16 matmul (stas00/ml-engineering)",
            "gemm.tile": "CUTLASS 3 SM90 warp-specialized tile 128x256x64",
            "kernel_gap_us": "1.1-1.3 us between back-to-back PyTorch kernels (pytorch/pytorch issue #161104)",
            "memory_efficiency": "STREAM triad ~3.0 of 3.35 TB/s (docs/research-notes.md (d))",
            "attention": "unused on Hopper: fused attention follows the per-shape kernel model of attention.yaml "
            "(python -m simulator.calibrate attention); these constants are its fallback: FlashAttention-3 / cuDNN "
            "forward ~600 of 989 TFLOP/s at head dim 128, causal, 4k-8k tokens (Shah et al. 2024, Fig. 5)",
        },
    ),
}  # fmt: skip


def _apply(spec: FitSpec, x: np.ndarray) -> ComputeCalibration:
    """Parameter vector → calibration, clipped to the physical bounds."""
    eff = float(np.clip(x[0], 0.4, spec.max_gemm_efficiency))
    k_over = float(np.clip(x[1], 0.0, 8.0))
    cal = replace(spec.base, gemm=replace(spec.base.gemm, max_efficiency=eff, k_overhead_tiles=k_over))
    if spec.fit_attention:
        fwd = float(np.clip(x[2], 0.3, 0.75))
        cal = replace(cal, attention=AttentionCalibration(fwd, fwd * FA2_BACKWARD / FA2_FORWARD))
    return cal


def _objective(spec: FitSpec) -> tuple[Callable[[np.ndarray], float], list[str]]:
    rows = [(r, s) for r, s in suite_rows(list(spec.suites)) if r.role == "fit"]
    labels = [f"{r.suite} {r.name}" for r, _ in rows]
    cases = korthikanti_cases() if spec.with_layer else []
    labels += [f"korthikanti-2022-layer {c.config} {p}" for c in cases for p in ("forward", "backward")]

    def loss(x: np.ndarray) -> float:
        cal = _apply(spec, x)
        errs = [math.log(r.predicted_s / r.row.measured_s) for r in run_rows(rows, cal)]
        for c in cases:
            fwd, bwd = layer_times(c, cal)
            errs += [math.log(fwd / c.forward_s), math.log(bwd / c.backward_s)]
        return float(np.mean(np.square(errs)))

    return loss, labels


def fit(gpu: str, max_evaluations: int = 120) -> tuple[ComputeCalibration, float, list[str]]:
    """Fit ``gpu``'s constants; returns the calibration, the RMS log error and the fitted rows."""
    spec = SPECS[gpu]
    loss, labels = _objective(spec)
    x0 = np.array([spec.max_gemm_efficiency * 0.9, 3.0] + ([0.55] if spec.fit_attention else []))
    steps = np.array([0.05, 1.5] + ([0.1] if spec.fit_attention else []))
    simplex = np.vstack([x0] + [x0 + np.eye(x0.size)[i] * steps[i] for i in range(x0.size)])
    res = minimize(loss, x0, method="Nelder-Mead",
                   options={"initial_simplex": simplex, "maxfev": max_evaluations, "xatol": 1e-3, "fatol": 1e-6})  # fmt: skip
    return _apply(spec, res.x), math.sqrt(float(res.fun)), labels


def write_profile(cal: ComputeCalibration, rms: float, labels: list[str], spec: FitSpec) -> Path:
    """Write the fitted profile with its provenance."""
    doc: dict[str, Any] = {
        "gpu": cal.gpu,
        "gemm": {
            "max_efficiency": round(cal.gemm.max_efficiency, 4),
            "tile_m": cal.gemm.tile_m,
            "tile_n": cal.gemm.tile_n,
            "tile_k": cal.gemm.tile_k,
            "k_overhead_tiles": round(cal.gemm.k_overhead_tiles, 3),
        },  # fmt: skip
        "attention": {
            "flash_forward_efficiency": round(cal.attention.flash_forward_efficiency, 4),
            "flash_backward_efficiency": round(cal.attention.flash_backward_efficiency, 4),
        },  # fmt: skip
        "memory_efficiency": cal.memory_efficiency,
        "kernel_gap_us": round(cal.kernel_gap_s * 1e6, 3),
        "fit_rms_log_error": round(rms, 4),
        "fitted_on": labels,
        "sources": spec.sources,
    }
    header = (f"# Calibration profile of {cal.gpu}: GENERATED by `python -m simulator.calibrate compute`; do not edit.\n"
              f"# Fitted (gemm.max_efficiency, gemm.k_overhead_tiles"
              f"{', attention.flash_forward_efficiency' if spec.fit_attention else ''}) on the rows in fitted_on;\n"
              "# the other constants are measurements, with their sources below.\n")  # fmt: skip
    path = CALIBRATION_DIR / f"{cal.gpu}.yaml"
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=110))
    return path


def check(gpu: str) -> bool:
    """Whether the shipped profile of ``gpu`` still reproduces the error recorded when it was fitted (the
    model changed since, or the file was edited, when it does not)."""
    spec = SPECS[gpu]
    path = CALIBRATION_DIR / f"{gpu}.yaml"
    doc = yaml.safe_load(path.read_text())
    cal = compute_calibration.__wrapped__(gpu)  # bypass the cache: read the file as it is now
    loss, _ = _objective(spec)
    x = np.array([cal.gemm.max_efficiency, cal.gemm.k_overhead_tiles])
    rms = math.sqrt(loss(x))
    ok = abs(rms - float(doc["fit_rms_log_error"])) <= 2e-3
    print(
        f"{gpu}: rms log error {rms:.4f}, recorded {doc['fit_rms_log_error']}: {'up to date' if ok else 'STALE'}"
    )
    return ok


def main(argv: list[str]) -> int:
    """Refit every GPU type that has measurements (or those named with ``--gpu``), rewriting their profiles;
    with ``--check``, only verify that the shipped profiles are up to date (exit 1 if not)."""
    parser = argparse.ArgumentParser(prog="python -m simulator.calibrate compute")
    parser.add_argument(
        "--gpu", action="append", choices=sorted(SPECS), help="only this GPU type (repeatable)"
    )
    parser.add_argument("--max-evaluations", type=int, default=120, help="simulator evaluations per GPU type")
    parser.add_argument(
        "--check", action="store_true", help="do not fit; exit 1 if a shipped profile is stale"
    )
    args, _ = parser.parse_known_args(argv)
    gpus = args.gpu or list(SPECS)
    if args.check:
        return 0 if all([check(g) for g in gpus]) else 1
    for gpu in gpus:
        cal, rms, labels = fit(gpu, args.max_evaluations)
        path = write_profile(cal, rms, labels, SPECS[gpu])
        print(f"{gpu}: rms log error {rms:.3f} over {len(labels)} points -> {path}")
    return 0
