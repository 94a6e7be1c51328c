"""Where the step goes per kind of kernel (issue #8, point 2): the report's ``kernel_classes``.

The classes are set where the compute model times a kernel (``hardware/compute.py`` ``KernelClass``) and
carried through fused ops and the trace, so they must (a) add up to the breakdown's compute time on any
scenario, (b) give a GEMM time equal to the compute model's own GEMM kernel times summed over the kernel
list of a Megatron layer (Shoeybi et al. 2019; Korthikanti et al. 2022 Sec. 4: QKV, projection, FC1, FC2, and
the output layer; each GEMM's input- and weight-gradient GEMMs in backward), (c) show FP8 cast time only under
FP8, and (d) show host-bound time where kernels are too short to hide their launch.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from simulator.hardware.calibration import compute_calibration
from simulator.hardware.compute import KERNEL_CLASSES, ComputeModel, KernelClass, KernelTime
from simulator.hardware.gpu import get_gpu
from simulator.report.schema import KernelClasses, StepReport
from simulator.report.tabular import report_row
from simulator.scenario import load_scenario, scenario_from_dict
from simulator.simulate import simulate

ROOT = Path(__file__).resolve().parent.parent
DENSE = "scenarios/quickstart.yaml"  # GPT-3 XL-like, bf16, tp/dp on 2 A100 hosts
MOE = "scenarios/moe/mixtral-8x7b-ep8-64xh100.yaml"  # bf16, ep 8
FP8_CP = "scenarios/validation/modern/nemo-24.07-h100/llama3-8b-8.yaml"  # fp8, ring context parallel cp 2
FP8_CP8 = "scenarios/validation/modern/torchtitan-h100/8b-fsdp1-cp8-256k.yaml"  # fp8, FSDP, ring cp 8
# rounding of sums over the critical rank's ops (float64, ~10^4 terms): far below 1e-9 of the step
REL = 1e-9


def _report(path: str, overrides: list[str] | None = None) -> StepReport:
    return simulate(load_scenario(ROOT / path, overrides)).report


@pytest.mark.parametrize("path", [DENSE, MOE, FP8_CP, FP8_CP8])
def test_classes_sum_to_compute_and_exposed_comm(path):
    """GEMM + attention + element-wise + FP8 cast + host-bound = the breakdown's compute time; the optimizer
    class lies inside ``other_s``; communication is the exposed communication."""
    rep = _report(path)
    k, b = rep.kernel_classes, rep.breakdown
    assert k.compute_s() == pytest.approx(b.compute_s, rel=REL)
    assert k.communication_s == b.exposed_comm_s
    assert 0.0 < k.optimizer_s <= b.other_s * (1 + REL)
    assert k.gemm_s > 0 and k.elementwise_s > 0 and k.attention_s > 0  # every transformer runs all three
    assert all(v >= 0 for v in k.model_dump().values())


def _linear_gemms(cm: ComputeModel, tokens: int, n_out: int, k_in: int) -> tuple[float, float]:
    """(forward, backward) seconds of one linear layer's GEMMs: [T, k]·[k, n]; dgrad [T, n]·[n, k] and
    wgrad [k, T]·[T, n]."""
    fwd = cm.gemm(tokens, n_out, k_in).duration_s
    bwd = cm.gemm(tokens, k_in, n_out).duration_s + cm.gemm(k_in, n_out, tokens).duration_s
    return fwd, bwd


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_gemm_seconds_are_the_compute_models_gemms_of_the_layer(make_scenario, recompute):
    """One layer on one GPU, 3 micro-batches: the GEMM class is exactly the compute model's GEMM times of the
    layer's forward, backward (and, with full recompute, forward again), plus the output layer's, times the
    micro-batches. Flash attention leaves no GEMM in the attention core."""
    h, ffn, vocab, seq, mbs = 1024, 4096, 2048, 1024, 3
    model = {"layers": 1, "hidden": h, "heads": 8, "ffn_hidden": ffn, "vocab": vocab}
    scenario = make_scenario(
        gpus_per_host=1, model=model, seq_len=seq, micro_batches=mbs, training__recompute=recompute
    )
    rep = simulate(scenario).report
    gpu = "a100-sxm-80gb"  # the conftest host
    cm = ComputeModel(get_gpu(gpu), compute_calibration(gpu), "bf16")
    linears = [(3 * h, h), (h, h), (ffn, h), (h, ffn)]  # QKV (kv heads = heads), projection, FC1, FC2
    fwd = bwd = 0.0
    for n_out, k_in in linears:
        f, b = _linear_gemms(cm, seq, n_out, k_in)
        fwd, bwd = fwd + f, bwd + b
    head_fwd = cm.gemm(seq, vocab, h, linear=False).duration_s
    head_bwd = sum(cm.gemm(*shape, linear=False).duration_s for shape in ((seq, h, vocab), (h, vocab, seq)))
    per_mb = fwd + bwd + head_fwd + head_bwd + (fwd if recompute == "full" else 0.0)
    assert rep.kernel_classes.gemm_s == pytest.approx(mbs * per_mb, rel=REL)
    assert rep.kernel_classes.fp8_cast_s == 0.0


def test_fp8_has_cast_time_and_bf16_none():
    """The FP8 run quantises its GEMM inputs; the same layout in BF16 casts nothing, and its GEMMs take
    longer than the FP8 ones (FP8 tensor cores are faster, ``fp8.yaml``)."""
    fp8 = _report(FP8_CP)
    bf16 = _report(FP8_CP, ["training.precision=bf16", "training.fp8_recipe=null"])
    assert fp8.layout is not None and fp8.layout.precision == "fp8"
    assert fp8.kernel_classes.fp8_cast_s > 0
    assert bf16.kernel_classes.fp8_cast_s == 0.0
    assert bf16.kernel_classes.gemm_s > fp8.kernel_classes.gemm_s


def test_launch_bound_tiny_model_is_host_bound(make_doc):
    """A model whose kernels are far shorter than their launch, on an H100 (launch fitted at ~15 us per kernel,
    ``calibration/h100-sxm.yaml``, against ~1 us of GPU time each here): the GPU waits for the host, and that
    wait is its own class (the stretched runs still sum to the compute time)."""
    doc = make_doc(gpus_per_host=1, model={"layers": 2, "hidden": 64, "heads": 2, "vocab": 128}, seq_len=32)
    doc["cluster"]["topology"]["host"]["gpu"] = "h100-sxm"
    rep = simulate(scenario_from_dict(doc)).report
    k = rep.kernel_classes
    assert k.host_bound_s > 0
    assert k.compute_s() == pytest.approx(rep.breakdown.compute_s, rel=REL)


def test_a_large_model_is_not_host_bound():
    """GEMMs of a 1.3B-parameter model at sequence 2048 run far longer than their launches."""
    assert _report(DENSE).kernel_classes.host_bound_s == 0.0


def test_kernel_times_keep_their_class_when_combined_and_split():
    """A GEMM with its FP8 cast keeps each part's seconds in its class; ring attention's blocks split every
    class evenly."""
    gpu = "h100-sxm"
    cm = ComputeModel(get_gpu(gpu), compute_calibration(gpu), "fp8")
    g, c = cm.gemm(4096, 4096, 4096), cm.fp8_cast(4096 * 4096, transpose=True)
    both = g.plus(c)
    idx = {k: i for i, k in enumerate(KERNEL_CLASSES)}
    assert both.class_s[idx[KernelClass.GEMM]] == g.duration_s
    assert both.class_s[idx[KernelClass.FP8_CAST]] == c.duration_s
    assert sum(both.class_s) == pytest.approx(both.duration_s, rel=1e-15)
    part = cm.flash_attention(1e12, 1e8, False).split(4)
    assert part.class_s[idx[KernelClass.ATTENTION]] == pytest.approx(part.duration_s, rel=1e-15)
    assert KernelTime(0.0, 0.0, 0.0).class_s == (0.0,) * len(KERNEL_CLASSES)


def test_csv_row_and_schema_carry_every_class():
    """The CSV flattening names each class by its JSON path, and every KernelClass has a report field."""
    rep = _report(DENSE)
    row = report_row(rep)
    for field in KernelClasses.model_fields:
        assert row[f"kernel_classes.{field}"] == getattr(rep.kernel_classes, field)
    assert {f"{c.value}_s" for c in KernelClass} <= set(KernelClasses.model_fields)
