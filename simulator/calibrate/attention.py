"""Fit the fused-attention kernel model (``simulator/hardware/attention.py``) to published kernel measurements.

``python -m simulator.calibrate attention`` reads the measured points of ``simulator/hardware/kernels/<gpu>.yaml``
(each with its source) and rewrites ``simulator/hardware/attention.yaml``. Per implementation and direction it
fits four constants (peak fraction, per-tile overhead, causal factor, head-dimension scale) by least squares in
log space; a direction with no causal point takes the causal factor of the same implementation's forward pass.
``--check`` refits and fails when a shipped constant moved by more than 1%.

Architectures without per-shape measurements of their own (A100, B200) keep the shape constants of the same
implementation on Hopper and take their asymptote from the figure their source gives (see ``_ANCHORS``). An
implementation published only as a ratio to another (FlashAttention-1 against FlashAttention-2) is that one
scaled (``_RELATIVE``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.optimize import least_squares

from simulator.hardware.attention import AttentionKernel

HARDWARE = Path(__file__).resolve().parent.parent / "hardware"
OUT = HARDWARE / "attention.yaml"
FITTED_GPU = (
    "h100-sxm"  # the GPU whose kernel file holds per-shape FA2 / cuDNN / FA3 sweeps (FA3 paper, Fig. 5-7)
)
DENSE_BF16_TFLOPS = {"h100-sxm": 989.4}
IMPLS = ("fa2", "cudnn", "fa3")

# Asymptotic forward rate (fraction of dense BF16 peak) where only a headline figure is published; the backward
# keeps Hopper's backward/forward ratio of the same implementation.
_ANCHORS: dict[str, dict[str, tuple[float, str]]] = {
    "ampere": {
        "fa2": (
            0.73,
            "FlashAttention-2 on A100: up to 73% of the 312 TFLOP/s peak in the forward pass (Dao 2023, Sec. 4.1)",
        ),
        "cudnn": (
            0.73,
            "cuDNN fused attention on A100 taken equal to FlashAttention-2 (no per-shape figure published)",
        ),
    },
    "blackwell": {
        "cudnn": (
            0.55,
            "FlashAttention-4 reaches 1,613 TFLOP/s (71% of B200) and 'up to 1.3x over cuDNN 9.13' "
            "(Zadouri et al. 2025): cuDNN >= 1,240 TFLOP/s = 55% of 2,250",
        ),
        "fa2": (0.16, "FlashAttention-2 on B200: 300-380 TFLOP/s, 13-17% of 2,250 (kernels/b200.yaml)"),
    },
}
# Implementations published only relative to another on the same instruction path: (base, rate ratio, source),
# applied to every architecture that has the base kernel.
_RELATIVE: dict[str, tuple[str, float, str]] = {
    "fa1": (
        "fa2",
        0.5,
        "FlashAttention(-1) reaches 25-40% of the A100 peak where FlashAttention-2 reaches 50-73%, FA2 being "
        "'around 2x' faster (Dao 2023, arXiv:2307.08691, abstract and Sec. 4.1); its Triton port (pre-MLIR "
        "Triton, llm-foundry flash_attn_triton.py) is 'slightly slower than the CUDA version' forward+backward "
        "(that file's docstring). On Hopper FA1, the port and FA2 all issue Ampere mma.sync (no wgmma or TMA: "
        "Shah et al. 2024, Sec. 1), so the A100 ratio carries over",
    ),
}
ARCH_GPUS = {
    "hopper": ["h100-sxm", "h800-sxm", "h200-sxm", "h100-96gb-hbm2e"],
    "ampere": ["a100-sxm-80gb", "a100-sxm-40gb"],
    "blackwell": ["b200", "gb200"],
}


def _fit(points: list[dict[str, Any]], causal_factor: float | None) -> tuple[np.ndarray, float]:
    """(peak fraction, overhead, κ, d0) and the median |error| of the fit."""

    def model(p: np.ndarray, a: dict[str, Any]) -> float:
        k = AttentionKernel(p[0], p[1], causal_factor if causal_factor is not None else p[2], p[3])
        return k.efficiency(a["seq_len"], a["head_dim"], bool(a["causal"])) * DENSE_BF16_TFLOPS[FITTED_GPU]

    def residuals(p: np.ndarray) -> list[float]:
        return [float(np.log(model(p, a) / a["tflops"])) for a in points]

    fit = least_squares(
        residuals, [0.6, 1.5, 0.95, 56.0], bounds=([0.05, 0.0, 0.5, 0.0], [1.0, 20.0, 1.0, 500.0])
    )
    return fit.x, float(np.median(np.abs(np.expm1(residuals(fit.x)))))


def fitted() -> dict[str, Any]:
    """The attention.yaml document, fitted anew."""
    doc = yaml.safe_load((HARDWARE / "kernels" / f"{FITTED_GPU}.yaml").read_text())
    pts = [a for a in doc["attention"] if a.get("precision") == "bf16" and a.get("causal") is not None]
    hopper: dict[str, dict[str, Any]] = {}
    for impl in IMPLS:
        for direction in ("fwd", "bwd"):
            sel = [a for a in pts if a["impl"] == impl and a["direction"] == direction]
            has_causal = any(a["causal"] for a in sel)
            kappa = None if has_causal else hopper[impl]["fwd"]["causal_factor"]
            p, err = _fit(sel, kappa)
            hopper.setdefault(impl, {})[direction] = {
                "peak_fraction": round(float(p[0]), 4),
                "block_overhead": round(float(p[1]), 3),
                "causal_factor": round(float(kappa if kappa is not None else p[2]), 3),
                "head_dim_half": round(float(p[3]), 1),
                "source": f"fitted on {len(sel)} {impl} {direction} points of kernels/{FITTED_GPU}.yaml (FA3 paper "
                f"arXiv:2407.08608 Fig. 5-7, H100 SXM5), median |error| {err:.1%}"
                + ("" if has_causal else "; causal factor from the forward fit (no causal backward point)"),
            }
    archs: dict[str, Any] = {"hopper": {"gpus": ARCH_GPUS["hopper"], "kernels": hopper}}
    for arch, anchors in _ANCHORS.items():
        kernels: dict[str, Any] = {}
        for impl, (fwd_peak, source) in anchors.items():
            ratio = hopper[impl]["bwd"]["peak_fraction"] / hopper[impl]["fwd"]["peak_fraction"]
            for direction, peak in (("fwd", fwd_peak), ("bwd", fwd_peak * ratio)):
                shape = {k: v for k, v in hopper[impl][direction].items() if k != "source"}
                kernels.setdefault(impl, {})[direction] = shape | {
                    "peak_fraction": round(peak, 4),
                    "source": f"{source}; shape constants of {impl} {direction} on Hopper",
                }
        archs[arch] = {"gpus": ARCH_GPUS[arch], "kernels": kernels}
    for entry in archs.values():
        for impl, (base, ratio, source) in _RELATIVE.items():
            if base in entry["kernels"]:
                entry["kernels"][impl] = {
                    direction: k | {
                        "peak_fraction": round(k["peak_fraction"] * ratio, 4),
                        "source": f"{source}: {ratio} x {base} {direction} on this architecture",
                    }
                    for direction, k in entry["kernels"][base].items()
                }
    return {"architectures": archs}  # which implementation a framework calls: frameworks/profiles/


def main(argv: list[str]) -> int:
    """Rewrite attention.yaml (or, with ``--check``, verify it)."""
    doc = fitted()
    if "--check" in argv:
        shipped = yaml.safe_load(OUT.read_text())
        for arch, entry in doc["architectures"].items():
            for impl, dirs in entry["kernels"].items():
                for direction, k in dirs.items():
                    old = shipped["architectures"][arch]["kernels"][impl][direction]
                    for key in ("peak_fraction", "block_overhead", "causal_factor", "head_dim_half"):
                        if abs(old[key] - k[key]) > 0.01 * max(abs(k[key]), 1e-9) + 1e-3:
                            print(
                                f"calibrate attention: {arch} {impl} {direction} {key} {old[key]} -> {k[key]}",
                                file=sys.stderr,
                            )
                            return 1
        print("calibrate attention: attention.yaml reproduces its fit")
        return 0
    header = (
        "# Fused attention kernel model (simulator/hardware/attention.py): GENERATED by\n"
        "# `python -m simulator.calibrate attention` from published kernel measurements; do not edit.\n"
    )
    OUT.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=110))
    print(f"calibrate attention: wrote {OUT}")
    return 0
