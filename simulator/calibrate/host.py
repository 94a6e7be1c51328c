"""Fit a framework's host (CPU) seconds per kernel launch on the published runs it bounds (issue #9: the host cost
per kernel launch in each execution mode, fitted per framework where no measurement gives it).

Where the host runs ahead of the GPU (every dense step: ``workload/steps.py``), the launch cost hides under the
kernels and no step time constrains it; where it cannot (Megatron-Core's dropless MoE dispatcher waits for the
token counts on the host in every MoE layer, ``frameworks/profiles/megatron-core.yaml``), it sets the step
time. So ``python -m simulator.calibrate host`` fits ``kernel_launch_us`` of each framework in ``SPECS`` on the
rows of its suite that synchronise the host: the mixture-of-experts rows run by that framework, every one of
them (the held-out suite's MoE rows are not read). The bounds are measurements: no less than the CUDA launch
path alone, no more than one Transformer Engine module call per kernel. The result and each row's residual go
into ``simulator/frameworks/host.yaml``; the measured entries there are left as they are. ``--check`` verifies
the shipped value still reproduces its recorded error. Run it after ``calibrate compute`` and ``fp8``.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy.optimize import minimize_scalar

from simulator.frameworks.profile import host_costs
from simulator.validation.suites import Result, run_rows, suite_rows

HOST_FILE = Path(__file__).resolve().parent.parent / "frameworks" / "host.yaml"
LOWER_US, UPPER_US = 4.51, 99.66
BOUNDS_SOURCE = (
    "lower: the CUDA launch path of one kernel on H100, 4.51 us (TaxBreak, arXiv 2603.12465, as used by its tool "
    "prabsy96/SODA src/soda/common/utils.py T_FLOOR_SYS_MS); upper: one Transformer Engine Linear forward, 99.66 us "
    "of CPU on GB200 (NVIDIA/TransformerEngine issue #2053), i.e. a whole TE module call per kernel"
)
# framework profile → suite whose MoE rows of that framework it is fitted on
SPECS = {"megatron-core": "modern-training-runs"}


def _rows(framework: str, suite: str) -> list:
    return [
        (r, s) for r, s in suite_rows([suite])
        if s.config.framework.name == framework and s.model.moe is not None
    ]  # fmt: skip


def _errors(results: list[Result]) -> list[float]:
    return [math.log(r.predicted_s / r.row.measured_s) for r in results if r.runs]


def _rms(rows: list, launch_us: float, workers: int) -> tuple[float, list[Result]]:
    results = run_rows(rows, workers=workers, host_launch_s=launch_us * 1e-6)
    return math.sqrt(float(np.mean(np.square(_errors(results))))), results


def fit(framework: str, workers: int) -> tuple[float, float, list[Result]]:
    """(µs per launch, RMS log error, per-row results) of the best fit within the bounds."""
    rows = _rows(framework, SPECS[framework])
    res = minimize_scalar(
        lambda us: _rms(rows, float(us), workers)[0] ** 2, bounds=(LOWER_US, UPPER_US), method="bounded",
        options={"xatol": 0.5, "maxiter": 12},
    )  # fmt: skip
    us = round(float(res.x), 2)
    rms, results = _rms(rows, us, workers)
    return us, rms, results


def _write(doc: dict[str, Any]) -> None:
    header = "".join(line + "\n" for line in HOST_FILE.read_text().splitlines() if line.startswith("#"))
    HOST_FILE.write_text(header + yaml.safe_dump(doc, sort_keys=False, width=110))


def main(argv: list[str]) -> int:
    """Fit (or ``--check``) the host launch cost of every framework in SPECS."""
    parser = argparse.ArgumentParser(prog="python -m simulator.calibrate host")
    parser.add_argument("--check", action="store_true", help="do not fit; exit 1 if a shipped value is stale")
    parser.add_argument("--workers", type=int, default=2, help="processes to simulate rows in (default 2)")
    args, _ = parser.parse_known_args(argv)
    doc = yaml.safe_load(HOST_FILE.read_text())
    status = 0
    for framework, suite in SPECS.items():
        if args.check:
            rms, _ = _rms(_rows(framework, suite), host_costs()[framework]["kernel_launch_us"], args.workers)
            recorded = float(doc[framework].get("fit_rms_log_error", -1))
            ok = abs(rms - recorded) <= 2e-3
            print(f"{framework} host: rms log error {rms:.4f}, recorded {recorded}: {'up to date' if ok else 'STALE'}")
            status = max(status, 0 if ok else 1)
            continue
        us, rms, results = fit(framework, args.workers)
        doc[framework] = {
            "kernel_launch_us": us,
            "fitted": True,
            "source": f"fitted by python -m simulator.calibrate host on the {framework} MoE rows of {suite} "
            f"(the dropless dispatcher's host synchronisation exposes the launches), within [{LOWER_US}, "
            f"{UPPER_US}] us: {BOUNDS_SOURCE}",
            "fit_rms_log_error": round(rms, 4),
            "fitted_on": [
                f"{r.row.suite} {r.row.name}: predicted {r.predicted_s:.3f} s, measured {r.row.measured_s:.3f} s "
                f"({r.error:+.1%})"
                for r in results
            ],
        }
        _write(doc)
        print(f"{framework} host: {us} us per kernel launch, rms log error {rms:.3f} over {len(results)} rows")
    return status
