"""Fit the FP8 GEMM efficiency of a GPU type on published FP8 training runs (issue #8: a constant that only an
end-to-end fit can give exists per GPU type and precision, and is fitted by a script anyone can rerun).

``python -m simulator.calibrate fp8`` fits ``gemm.fp8_max_efficiency`` of each GPU in ``SPECS`` on the suite rows
marked ``fit`` in ``simulator/validation/suites.yaml`` whose scenario trains in FP8 on that GPU, with every other
constant of the profile as fitted by ``calibrate compute`` (run that first), and writes it into
``simulator/hardware/calibration/<gpu>.yaml`` with the rows and the residual of each. The bound is physical: no
more than the best FP8 GEMM measured on the GPU (kernels/<gpu>.yaml). ``--check`` verifies the shipped value
still reproduces its recorded error. Without a fit, FP8 GEMMs run at the BF16 efficiency times the
same-machine FP8/BF16 ratio (hardware/fp8.yaml).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace

import numpy as np
import yaml
from scipy.optimize import minimize_scalar

from simulator.calibrate.compute import CALIBRATION_DIR
from simulator.hardware.calibration import ComputeCalibration, compute_calibration
from simulator.validation.suites import Result, run_rows, suite_rows

# gpu → (suite, upper bound with its source)
SPECS = {
    "h100-sxm": (
        "modern-training-runs",
        0.709,
        "best FP8 GEMM on H100 SXM: torch._scaled_mm 1024x9216x14336 at 1402.6 of 1978.9 TFLOP/s "
        "(stas00/ml-engineering, kernels/h100-sxm.yaml)",
    ),
}


def _rows(gpu: str, suite: str) -> list:
    return [
        (r, s) for r, s in suite_rows([suite])
        if r.role == "fit" and r.gpu == gpu and s.training.precision == "fp8"
    ]  # fmt: skip


def _with(cal: ComputeCalibration, eff: float) -> ComputeCalibration:
    return replace(cal, gemm=replace(cal.gemm, fp8_max_efficiency=round(float(eff), 4)))


def _errors(results: list[Result]) -> list[float]:
    return [math.log(r.predicted_s / r.row.measured_s) for r in results if r.runs]


def fit(gpu: str) -> tuple[float, float, list[Result]]:
    """(efficiency, RMS log error, per-row results) of the best fit within the bound."""
    suite, bound, _ = SPECS[gpu]
    rows = _rows(gpu, suite)
    base = compute_calibration.__wrapped__(gpu)

    def loss(x: float) -> float:
        return float(np.mean(np.square(_errors(run_rows(rows, _with(base, x))))))

    res = minimize_scalar(loss, bounds=(0.30, bound), method="bounded", options={"xatol": 4e-3, "maxiter": 9})
    eff = round(float(res.x), 4)
    results = run_rows(rows, _with(base, eff))
    return eff, math.sqrt(float(np.mean(np.square(_errors(results))))), results


def main(argv: list[str]) -> int:
    """Fit (or ``--check``) the FP8 efficiency of every GPU in SPECS."""
    parser = argparse.ArgumentParser(prog="python -m simulator.calibrate fp8")
    parser.add_argument("--check", action="store_true", help="do not fit; exit 1 if a shipped value is stale")
    args, _ = parser.parse_known_args(argv)
    status = 0
    for gpu, (suite, _bound, source) in SPECS.items():
        path = CALIBRATION_DIR / f"{gpu}.yaml"
        doc = yaml.safe_load(path.read_text())
        if args.check:
            cal = compute_calibration.__wrapped__(gpu)
            rms = math.sqrt(float(np.mean(np.square(_errors(run_rows(_rows(gpu, suite), cal))))))
            ok = abs(rms - float(doc.get("fp8_fit_rms_log_error", -1))) <= 2e-3
            print(f"{gpu} fp8: rms log error {rms:.4f}, recorded {doc.get('fp8_fit_rms_log_error')}: "
                  f"{'up to date' if ok else 'STALE'}")  # fmt: skip
            status = max(status, 0 if ok else 1)
            continue
        eff, rms, results = fit(gpu)
        doc["gemm"]["fp8_max_efficiency"] = eff
        doc["fp8_fit_rms_log_error"] = round(rms, 4)
        doc["fp8_fitted_on"] = [
            f"{r.row.suite} {r.row.name}: predicted {r.predicted_s:.3f} s, measured {r.row.measured_s:.3f} s "
            f"({r.error:+.1%})"
            for r in results
        ]
        doc.setdefault("sources", {})["gemm.fp8_max_efficiency (bound)"] = source
        header = "".join(line + "\n" for line in path.read_text().splitlines() if line.startswith("#"))
        header += "# gemm.fp8_max_efficiency: fitted by `python -m simulator.calibrate fp8` on fp8_fitted_on.\n"
        path.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=110))
        print(f"{gpu} fp8: efficiency {eff} of the FP8 peak, rms log error {rms:.3f} over {len(results)} rows")
    return status
