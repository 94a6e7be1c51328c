"""GEMM constants of a GPU type that has published kernel measurements but no end-to-end runs fitted (issue #8:
B200 inherited the H100's profile whole), transferred from a reference GPU through the two GPUs' kernel fits.

The GEMM model (``hardware/compute.py``) has two constants per GPU: ``max_efficiency`` (the main loop's share of
the tensor-core peak) and ``k_overhead_tiles`` (a tile's prologue and epilogue, in main-loop iterations). Fitted
end to end on the reference GPU's training runs they hold what a framework adds to a bare kernel too. Both
GPUs' bare kernels are measured by the same published table, shape by shape, with one method (the XLA GPU
cost-model matmul table, ``kernels/<gpu>.yaml``); ``python -m simulator.calibrate transfer`` fits the same two
constants on each GPU's BF16 points (kernel durations: no gap, no launch) and gives the target the reference's
end-to-end constants times the ratio of the kernel fits: the framework's share is taken to be the same, the
kernel's own shape behaviour is measured. On Blackwell a main-loop iteration takes half the time it takes on
Hopper (twice the peak per SM), so a tile's fixed costs are about twice as many iterations: the fit shows it.
FP8 follows the BF16 ratio (the table's FP8 points on sm_90 exceed the dense peak, ``kernels/h100-sxm.yaml``).
The target's efficiency stays below the best GEMM measured on it. ``--check`` recomputes and compares.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.optimize import minimize

from simulator.calibrate.compute import CALIBRATION_DIR
from simulator.hardware.calibration import ComputeCalibration, GemmCalibration, compute_calibration
from simulator.hardware.compute import ComputeModel
from simulator.hardware.gpu import get_gpu

TABLE = "matmul_interpolator_data.h"  # the XLA table's file name, in the source of every point it gave
# target → (reference, best GEMM measured on the target as a fraction of its dense BF16 peak, with its source)
SPECS = {
    "b200": ("h100-sxm", 0.776, "best bf16 matmul 1745.0 of 2250 TFLOP/s at 1792x16128x3072 (stas00/ml-engineering "
             "MAMF, kernels/b200.yaml)"),
}  # fmt: skip


# Shapes that fill every SM of either GPU at least once with the model's 128x256 tiles (m*n >= 148 tiles): on
# fewer tiles cuBLAS picks smaller tiles or splits K, which the model does not describe (training's GEMMs are
# larger). The same shapes on both GPUs, so that their ratio compares like with like.
MIN_TILES = 148


def table_points(gpu: str) -> list[tuple[int, int, int, float]]:
    """(m, n, k, TFLOP/s) of the XLA table's BF16 points for ``gpu`` with m, n, k ≥ 1024 and enough tiles."""
    doc = yaml.safe_load(resources.files("simulator.hardware").joinpath("kernels", f"{gpu}.yaml").read_text())
    return [
        (int(p["m"]), int(p["n"]), int(p["k"]), float(p["tflops"])) for p in doc["gemm"]
        if TABLE in str(p.get("source", "")) and p["precision"] == "bf16" and min(p["m"], p["n"], p["k"]) >= 1024
        and math.ceil(p["m"] / 128) * math.ceil(p["n"] / 256) >= MIN_TILES
    ]  # fmt: skip


def _kernel_model(gpu: str, base: ComputeCalibration, eff: float, k_over: float) -> ComputeModel:
    gemm = GemmCalibration(eff, base.gemm.tile_m, base.gemm.tile_n, base.gemm.tile_k, k_over)
    return ComputeModel(get_gpu(gpu), replace(base, gemm=gemm, kernel_gap_s=0.0, clock_scale=1.0), "bf16")


def kernel_fit(gpu: str, base: ComputeCalibration) -> tuple[float, float, float]:
    """(max_efficiency, k_overhead_tiles, RMS log error) of the GEMM model on ``gpu``'s table points."""
    points = table_points(gpu)

    def loss(x: np.ndarray) -> float:
        cm = _kernel_model(gpu, base, float(np.clip(x[0], 0.2, 1.0)), float(np.clip(x[1], 0.0, 40.0)))
        errs = [math.log(cm.gemm(m, n, k).duration_s / (2.0 * m * n * k / (tf * 1e12))) for m, n, k, tf in points]
        return float(np.mean(np.square(errs)))

    res = minimize(loss, np.array([0.8, 4.0]), method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-8})
    return float(np.clip(res.x[0], 0.2, 1.0)), float(np.clip(res.x[1], 0.0, 40.0)), math.sqrt(float(res.fun))


def transfer(target: str) -> tuple[ComputeCalibration, dict[str, Any]]:
    """The target's calibration and the figures behind it."""
    ref_name, bound, _ = SPECS[target]
    ref = compute_calibration.__wrapped__(ref_name)
    e_r, k_r, rms_r = kernel_fit(ref_name, ref)
    e_t, k_t, rms_t = kernel_fit(target, ref)
    eff_ratio, k_ratio = e_t / e_r, k_t / k_r
    fp8 = None if ref.gemm.fp8_max_efficiency is None else round(ref.gemm.fp8_max_efficiency * eff_ratio, 4)
    gemm = replace(
        ref.gemm, max_efficiency=round(min(ref.gemm.max_efficiency * eff_ratio, bound), 4),
        k_overhead_tiles=round(ref.gemm.k_overhead_tiles * k_ratio, 3), fp8_max_efficiency=fp8,
    )  # fmt: skip
    figures = {
        "reference": ref_name,
        "reference_kernel_fit": {"max_efficiency": round(e_r, 4), "k_overhead_tiles": round(k_r, 3),
                                 "rms_log_error": round(rms_r, 4), "points": len(table_points(ref_name))},
        "target_kernel_fit": {"max_efficiency": round(e_t, 4), "k_overhead_tiles": round(k_t, 3),
                              "rms_log_error": round(rms_t, 4), "points": len(table_points(target))},
    }  # fmt: skip
    return replace(ref, gpu=target, gemm=gemm, fitted_on=(), inherited_from=None, transferred_from=ref_name), figures


def _doc(cal: ComputeCalibration, figures: dict[str, Any]) -> dict[str, Any]:
    ref_doc = yaml.safe_load((CALIBRATION_DIR / f"{figures['reference']}.yaml").read_text())
    _, _, bound_source = SPECS[cal.gpu]
    g = cal.gemm
    return {
        "gpu": cal.gpu,
        "gemm": {"max_efficiency": g.max_efficiency, "tile_m": g.tile_m, "tile_n": g.tile_n, "tile_k": g.tile_k,
                 "k_overhead_tiles": g.k_overhead_tiles, "fp8_max_efficiency": g.fp8_max_efficiency},
        "attention": ref_doc["attention"],
        "memory_efficiency": ref_doc["memory_efficiency"],
        "kernel_gap_us": ref_doc["kernel_gap_us"],
        "transferred_from": figures,
        "sources": {
            "gemm": f"{figures['reference']}'s end-to-end fit (calibration/{figures['reference']}.yaml) times the ratio "
            "of the kernel fits on the XLA GPU cost-model matmul table (tensorflow/tensorflow third_party/xla "
            "matmul_interpolator_data.h, keys sm_90 / sm_100; kernels/*.yaml): python -m simulator.calibrate transfer",
            "gemm.max_efficiency (bound)": bound_source,
            "attention": "unused on Blackwell: fused attention follows the per-shape kernel model of attention.yaml",
            "memory_efficiency, kernel_gap_us": f"{figures['reference']}'s (no STREAM-like or gap measurement of "
            f"{cal.gpu} at hand)",
        },
    }  # fmt: skip


def main(argv: list[str]) -> int:
    """Transfer (or ``--check``) the GEMM constants of every GPU in SPECS."""
    parser = argparse.ArgumentParser(prog="python -m simulator.calibrate transfer")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if a shipped profile is stale")
    args, _ = parser.parse_known_args(argv)
    status = 0
    for target in SPECS:
        cal, figures = transfer(target)
        path: Path = CALIBRATION_DIR / f"{target}.yaml"
        doc = _doc(cal, figures)
        if args.check:
            shipped = yaml.safe_load(path.read_text())
            ok = shipped.get("gemm") == doc["gemm"]
            print(f"{target}: {'up to date' if ok else 'STALE'}")
            status = max(status, 0 if ok else 1)
            continue
        header = (f"# Calibration profile of {target}: GENERATED by `python -m simulator.calibrate transfer`; do not "
                  f"edit.\n# GEMM constants transferred from {figures['reference']}'s end-to-end fit through kernel "
                  "fits on one published table (see transferred_from and sources).\n")  # fmt: skip
        path.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=110))
        print(f"{target}: max_efficiency {cal.gemm.max_efficiency}, k_overhead_tiles {cal.gemm.k_overhead_tiles} "
              f"(kernel fits {figures['reference_kernel_fit']} -> {figures['target_kernel_fit']})")  # fmt: skip
    return status
