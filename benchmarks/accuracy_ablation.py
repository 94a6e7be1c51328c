"""What each physical effect of the compute model contributes to accuracy on the modern validation suite.

    python benchmarks/accuracy_ablation.py [--suite modern-training-runs] [--out docs/accuracy-ablation.json]

Runs the suite with the full model, then once with each effect removed (the mechanism switched back to what
the simulator did before it existed), and prints median and max |error| of step time per class. The numbers
go in docs/accuracy.md. Effects:

* ``fp8``: FP8 GEMMs at the BF16 efficiency (ratio 1), no cast kernels, attention at the FP8 peak;
* ``attention-shape``: fused attention at the profile's one constant efficiency instead of the kernel model;
* ``framework``: every run launches Megatron-Core's fused kernels (no eager norms / SwiGLU / rotary, cuDNN
  attention) whatever its framework;
* ``rotary``: no rotary-embedding kernels;
* ``moe-launches``: the experts' GEMMs launched once as one grouped kernel, one kernel each for the router,
  the permutation and the sort (not TE 2.9's per-expert GEMMs and Megatron-Core's dispatcher kernels);
* ``fp8-recipe``: every FP8 run quantised as delayed scaling (one fused cast, no amax pass);
* ``host-sync``: Megatron-Core's dropless dispatcher does not wait for the token counts on the host;
* ``host-launch``: every framework launches every kernel in 11.86 us of host time (the H100 profile's fitted
  value before launch costs moved to the frameworks, ``frameworks/host.yaml``);
* ``ep-overlap``: ``moe_a2a_overlap`` ignored (no merged forward/backward pairs, all-to-alls exposed);
* ``b200-transfer``: B200 and GB200 with the H100's GEMM constants (as inherited before the kernel-table
  transfer, ``python -m simulator.calibrate transfer``);
* ``flex-dispatcher``: DeepEP and HybridEP run as Megatron-Core's all-to-all dispatcher (one message per expert
  copy, the count all-gather, the probabilities' all-to-all and the chunk sort); only held-out rows use them:
  ``--suite heldout-training-runs --only "without flex dispatcher"``;
* ``fa1``: llm-foundry's Triton FlashAttention (``framework.attention_impl: fa1``) run as FlashAttention-2;
* ``fused-accumulation``: Megatron-Core's wgrad GEMMs write a 16-bit gradient that a separate kernel adds into
  the main gradient (as before gradient-accumulation fusion was modelled), with the constants refitted with it;
* ``userbuffers-sms``: under ``tp_comm_overlap`` every GEMM keeps all its SMs (no 16-SM margin for Transformer
  Engine's pipelined and bulk overlap kernels), with the constants refitted with the margin.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from unittest import mock

from simulator.build import program_builder
from simulator.build import setup as setup_module
from simulator.frameworks import profile as fw
from simulator.hardware import calibration, compute
from simulator.validation import suites


@contextmanager
def _no_fp8_physics() -> Iterator[None]:
    zero = compute.KernelTime(0.0, 0.0, 0.0, 0.0)
    with (
        mock.patch.object(compute, "fp8_gemm_ratio", lambda gpu: 1.0),
        mock.patch.object(compute.ComputeModel, "fp8_cast", lambda self, n, transpose, tensors=1: zero),
        mock.patch.object(
            compute.ComputeModel, "attention_peak_flops_per_s", property(lambda self: self.peak_flops_per_s)
        ),
    ):
        yield


@contextmanager
def _no_attention_shape() -> Iterator[None]:
    with mock.patch.object(compute, "attention_kernel", lambda gpu, impl, direction: None):
        yield


@contextmanager
def _one_framework() -> Iterator[None]:
    fused = fw.framework_profile("megatron-core")
    with mock.patch.object(fw, "profile_for", lambda name, compile: replace(fused, name=name)):
        yield


@contextmanager
def _no_rotary() -> Iterator[None]:
    real = fw.profile_for
    with mock.patch.object(fw, "profile_for", lambda name, compile: replace(real(name, compile), rotary=None)):
        yield


@contextmanager
def _no_moe_launches() -> Iterator[None]:
    real = fw.profile_for
    with mock.patch.object(fw, "profile_for", lambda name, compile: replace(real(name, compile), moe=fw.MoEKernels())):
        yield


@contextmanager
def _delayed_recipe() -> Iterator[None]:
    real = setup_module.ComputeModel

    def delayed(*args: object, **kwargs: object) -> compute.ComputeModel:
        return replace(real(*args, **kwargs), fp8_recipe="delayed", fp8_cast_kernels=1)  # type: ignore[arg-type]

    with mock.patch.object(setup_module, "ComputeModel", delayed):
        yield


@contextmanager
def _no_host_sync() -> Iterator[None]:
    real = fw.profile_for

    def unsynced(name: str, compile: bool) -> fw.FrameworkProfile:
        p = real(name, compile)
        return replace(p, moe=replace(p.moe, dropless_host_sync=False))

    with mock.patch.object(fw, "profile_for", unsynced):
        yield


@contextmanager
def _old_launch() -> Iterator[None]:
    real = fw.profile_for
    with (
        mock.patch.object(fw, "profile_for", lambda name, compile: replace(real(name, compile), kernel_launch_s=11.86e-6)),
    ):
        yield


@contextmanager
def _no_ep_overlap() -> Iterator[None]:
    off = property(lambda self: False)
    with (
        mock.patch.object(program_builder.WorkloadSpec, "merged_pairs", off),
        mock.patch.object(program_builder.WorkloadSpec, "combined_1f1b", off),
    ):
        yield


@contextmanager
def _no_b200_transfer() -> Iterator[None]:
    real = calibration.compute_calibration

    def inherited(gpu: str) -> calibration.ComputeCalibration:
        if gpu in ("b200", "gb200"):
            return replace(real("h100-sxm"), gpu=gpu, inherited_from="h100-sxm")
        return real(gpu)

    with mock.patch.object(setup_module, "compute_calibration", inherited):
        yield


@contextmanager
def _no_flex_dispatcher() -> Iterator[None]:
    with mock.patch.object(setup_module, "FLEX_DISPATCHERS", ()):
        yield


@contextmanager
def _no_fa1() -> Iterator[None]:
    kernel = compute.attention_kernel
    with mock.patch.object(
        compute, "attention_kernel", lambda gpu, impl, d: kernel(gpu, "fa2" if impl == "fa1" else impl, d)
    ):
        yield


@contextmanager
def _no_fused_accumulation() -> Iterator[None]:
    profile_for = fw.profile_for

    def unfused(name: str, compile: bool) -> fw.FrameworkProfile:
        return replace(profile_for(name, compile), fused_grad_accumulation=False)

    with mock.patch.object(fw, "profile_for", unfused):
        yield


@contextmanager
def _no_userbuffers_sms() -> Iterator[None]:
    profile_for = fw.profile_for

    def every_sm(name: str, compile: bool) -> fw.FrameworkProfile:
        return replace(profile_for(name, compile), tp_overlap_sms={})

    with mock.patch.object(fw, "profile_for", every_sm):
        yield


@contextmanager
def _nothing() -> Iterator[None]:
    yield


ABLATIONS: dict[str, Callable[[], object]] = {
    "full model": _nothing,
    "without fp8": _no_fp8_physics,
    "without attention-shape": _no_attention_shape,
    "without framework": _one_framework,
    "without rotary": _no_rotary,
    "without MoE launches": _no_moe_launches,
    "without FP8 recipes": _delayed_recipe,
    "without host sync": _no_host_sync,
    "launch 11.86 us everywhere": _old_launch,
    "without EP overlap": _no_ep_overlap,
    "without B200 transfer": _no_b200_transfer,
    "without flex dispatcher": _no_flex_dispatcher,
    "without FA1 kernel": _no_fa1,
    "without fused grad accumulation": _no_fused_accumulation,
    "without userbuffers SM margin": _no_userbuffers_sms,
}


def _stats(errors: list[float]) -> tuple[float, float]:
    e = [abs(x) for x in errors if not math.isnan(x)]
    return (statistics.median(e), max(e)) if e else (float("nan"), float("nan"))


def run(suite: str, only: list[str] | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    """Per ablation (the full model and ``only``, default every one), per class: (median, max) |error|."""
    rows = list(suites.suite_rows([suite]))
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, ctx in ABLATIONS.items():
        if only and name != "full model" and name not in only:
            continue
        getattr(suites.evaluate, "cache_clear", lambda: None)()  # evaluate may memoise rows
        # the setup module imported profile_for by name: patch it there too
        with ctx(), mock.patch.object(setup_module, "profile_for", fw.profile_for):  # type: ignore[attr-defined]
            results = suites.run_rows(rows)
        by_class: dict[str, list[float]] = {"all": [r.error for r in results]}
        for r in results:
            for c in r.row.classes:
                by_class.setdefault(c, []).append(r.error)
        out[name] = {c: _stats(v) for c, v in by_class.items()}
        print(f"{name}: median {out[name]['all'][0]:.1%}, max {out[name]['all'][1]:.1%}", file=sys.stderr)
    return out


def main() -> int:
    """Run every ablation and print a Markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--suite", default="modern-training-runs")
    p.add_argument("--out", help="also write the figures as JSON")
    p.add_argument("--only", action="append", choices=[a for a in ABLATIONS if a != "full model"],
                   help="run only this ablation beside the full model (repeatable)")
    args = p.parse_args()
    res = run(args.suite, args.only)
    classes = list(res["full model"])
    print("| class | " + " | ".join(res) + " |")
    print("|---|" + "---|" * len(res))
    for c in classes:
        cells = [f"{res[a][c][0]:.1%} / {res[a][c][1]:.1%}" if c in res[a] else "-" for a in res]
        print(f"| {c} | " + " | ".join(cells) + " |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
