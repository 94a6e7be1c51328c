"""Compute model: the time of one kernel from its shape, FLOPs and bytes (roofline with shape-dependent
efficiency), for one GPU type and precision.

GEMM: a tensor-core GEMM runs as output tiles of ``tile_m × tile_n`` spread over the SMs in waves. Its time is
``waves × time-per-tile`` (tile and wave quantization, NVIDIA "Matrix Multiplication Background User's
Guide"), where a tile's main loop takes ``k/tile_k`` iterations plus a fixed prologue/epilogue of
``k_overhead_tiles`` iterations (software-pipelined main loop, CUTLASS), at the measured peak efficiency of
large GEMMs. The memory roofline (operands and result read/written once from HBM) bounds it from below.

FP8 training (Transformer Engine in Megatron-Core/NeMo, torchao float8 in torchtitan) runs the linear layers'
GEMMs in FP8 only: their operands are 1 byte, their efficiency is the profile's fitted FP8 efficiency
(``calibrate fp8``) or else the BF16 one times a same-machine measured ratio (``fp8.yaml``), and every such
GEMM needs its inputs quantised (cast + amax + transpose kernels, see ``fp8_cast``). Attention, the output layer and the router stay 16-bit in both frameworks' default recipes
(TE ``NVTE_FP8_DPA=0``; torchao converts ``nn.Linear`` only), so they run at the BF16 peak.

Fused attention follows the per-shape kernel model of the implementation the framework calls (``attention.py``).
A power-limited GPU type scales compute-bound efficiencies by its measured ``clock_scale``.

Element-wise kernels are memory bound: bytes / (HBM bandwidth × achieved fraction).
Every kernel also pays the GPU-side gap between back-to-back kernels, and carries the host time needed to
launch it: a run of short kernels cannot finish faster than the framework launches them (CPU-bound).

Every kernel time says which ``KernelClass`` its seconds belong to (``KernelTime.class_s``), set here where the
kernel is timed, so that a report can say where the step goes (issue #8): a step that adds two kernels adds their
seconds per class. FP8 quantisation (``fp8_cast``) is a class of its own, not element-wise, so that the cost of
FP8 training shows apart from the kernels BF16 training runs too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from functools import cache
from importlib import resources

import yaml

from simulator.hardware.attention import attention_kernel
from simulator.hardware.calibration import ComputeCalibration
from simulator.hardware.gpu import GpuSpec
from simulator.units import BYTES_PER_ELEMENT


class KernelClass(StrEnum):
    """What kind of work a kernel's seconds are (the JSON report's ``kernel_classes``, ``<value>_s``)."""

    GEMM = "gemm"  # tensor-core matrix multiplications (linear layers, unfused attention, logits, router)
    ATTENTION = "attention"  # fused attention kernels (flash attention forward and backward)
    ELEMENTWISE = "elementwise"  # memory-bound kernels: norms, activations, dropout, softmax, permutes ...
    FP8_CAST = "fp8_cast"  # FP8 quantisation of GEMM inputs (cast + amax + transpose)
    OPTIMIZER = "optimizer"  # the optimizer update with its gradient-norm and inf checks
    HOST_BOUND = "host_bound"  # not a kernel: the GPU waiting for the host to launch the next one


KERNEL_CLASSES: tuple[KernelClass, ...] = tuple(KernelClass)
ClassSeconds = tuple[float, ...]  # seconds per KERNEL_CLASSES entry, in that order
NO_CLASS_S: ClassSeconds = (0.0,) * len(KERNEL_CLASSES)
_CLASS_INDEX = {c: i for i, c in enumerate(KERNEL_CLASSES)}


# the zeros before and after each class's slot: a kernel's one-hot tuple is two concatenations (called per kernel)
_AROUND = {c: (NO_CLASS_S[:i], NO_CLASS_S[i + 1 :]) for c, i in _CLASS_INDEX.items()}


def class_seconds(kind: KernelClass, seconds: float) -> ClassSeconds:
    """``seconds`` all in the class ``kind``."""
    before, after = _AROUND[kind]
    return (*before, seconds, *after)


def add_class_seconds(a: ClassSeconds, b: ClassSeconds) -> ClassSeconds:
    """Per-class sum of two kernels' seconds."""
    return tuple(x + y for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class KernelTime:
    """Duration of one kernel and the work it does; ``class_s`` splits the duration over ``KERNEL_CLASSES``
    (all zero for a kernel built by hand without a class, e.g. a zero-time stand-in)."""

    duration_s: float
    flops: float
    bytes: float
    launch_s: float = 0.0  # host time to launch it
    class_s: ClassSeconds = NO_CLASS_S

    def plus(self, other: KernelTime) -> KernelTime:
        """Two kernels back to back, as one (durations, work, launches and per-class seconds added)."""
        return KernelTime(
            self.duration_s + other.duration_s, self.flops + other.flops, self.bytes + other.bytes,
            self.launch_s + other.launch_s, add_class_seconds(self.class_s, other.class_s),
        )  # fmt: skip

    def split(self, parts: int) -> KernelTime:
        """One of ``parts`` equal pieces of this kernel, each launched on its own (ring attention's blocks)."""
        return KernelTime(
            self.duration_s / parts, self.flops / parts, self.bytes / parts, self.launch_s,
            tuple(x / parts for x in self.class_s),
        )  # fmt: skip


@cache
def fp8_gemm_ratio(gpu: str) -> float | None:
    """FP8/BF16 GEMM efficiency ratio measured for ``gpu``'s architecture (``fp8.yaml``), None if unmeasured."""
    doc = yaml.safe_load(resources.files("simulator.hardware").joinpath("fp8.yaml").read_text())
    for entry in doc.values():
        if gpu in entry["gpus"]:
            return float(entry["gemm_efficiency_ratio"])
    return None


# Unmeasured architectures: the lower of the measured ratios (an optimistic FP8 is what buyers get burnt by).
_FP8_RATIO_FALLBACK = 0.842


@dataclass(frozen=True)
class ComputeModel:
    """Kernel durations on one GPU type at one training precision."""

    gpu: GpuSpec
    calib: ComputeCalibration
    precision: str
    attention_impl: str = "cudnn"  # the fused attention kernels the framework launches (attention.yaml)
    fp8_recipe: str = "delayed"  # FP8 scaling recipe (TrainingConfig.fp8_recipe; TE's default DelayedScaling)
    fp8_cast_kernels: int = 1  # kernels the framework launches to quantise one tensor under that recipe
    # host (CPU) seconds the framework spends to launch one kernel in its execution mode (frameworks/host.yaml);
    # 0 when the step replays as CUDA graphs
    kernel_launch_s: float = 0.0

    @property
    def peak_flops_per_s(self) -> float:
        """Dense tensor-core peak at the training precision."""
        return self.gpu.peak(self.precision)

    @property
    def fp8(self) -> bool:
        """Whether the linear layers' GEMMs run in FP8."""
        return self.precision == "fp8"

    @property
    def attention_peak_flops_per_s(self) -> float:
        """Peak of the attention kernels: 16-bit under FP8 training (see the module docstring)."""
        return self.gpu.peak("bf16") if self.fp8 else self.peak_flops_per_s

    @property
    def element_bytes(self) -> int:
        """Bytes per activation element at the training precision (fp8 GEMMs keep 16-bit activations)."""
        return 2 if self.precision == "fp8" else BYTES_PER_ELEMENT[self.precision]

    @property
    def memory_bytes_per_s(self) -> float:
        """Achieved HBM bandwidth of streaming kernels."""
        return self.gpu.hbm_bytes_per_s * self.calib.memory_efficiency

    def gemm(
        self,
        m: int,
        n: int,
        k: int,
        batch: int = 1,
        *,
        linear: bool = True,
        accumulate_bytes: int = 0,
        sms: int | None = None,
    ) -> KernelTime:
        """``batch`` independent ``[m, k] × [k, n]`` GEMMs in one kernel; ``linear=False`` for GEMMs that stay
        16-bit under FP8 training (attention core, output layer, router). ``accumulate_bytes``: the output is
        added into a buffer of that element size in the epilogue (C read, D written: Megatron's gradient-
        accumulation fusion, beta = 1) instead of written 16-bit; the epilogue's traffic overlaps the main loop
        of the next tiles, so it counts in the kernel's memory bound, not as a kernel of its own. ``sms``: the
        GEMM may use only that many SMs (cuBLAS's SM count target, which Transformer Engine's userbuffers set
        to leave SMs to a communication kernel running beside it): its tiles run in waves over those SMs, each
        SM at the rate it always has."""
        g = self.calib.gemm
        fp8 = self.fp8 and linear
        if fp8:
            peak = self.peak_flops_per_s
            eff = g.fp8_max_efficiency if g.fp8_max_efficiency is not None else g.max_efficiency * self.fp8_ratio
        else:
            peak, eff = self.attention_peak_flops_per_s, g.max_efficiency
        eff *= self.calib.clock_scale  # a power-limited GPU sustains lower tensor-core clocks
        flops = 2.0 * m * n * k * batch
        tiles = math.ceil(m / g.tile_m) * math.ceil(n / g.tile_n) * batch
        waves = math.ceil(tiles / (self.gpu.sm_count if sms is None else sms))
        iterations = math.ceil(k / g.tile_k) + g.k_overhead_tiles
        per_sm_flops = peak * eff / self.gpu.sm_count
        tile_s = 2.0 * g.tile_m * g.tile_n * g.tile_k * iterations / per_sm_flops
        operand = 1 if fp8 else self.element_bytes  # FP8 operands, 16-bit output
        out = 2 * accumulate_bytes if accumulate_bytes else self.element_bytes
        nbytes = float(batch * (operand * (m * k + k * n) + out * m * n))
        t = max(waves * tile_s, nbytes / self.memory_bytes_per_s) + self.calib.kernel_gap_s
        return KernelTime(t, flops, nbytes, self.kernel_launch_s, class_seconds(KernelClass.GEMM, t))

    @property
    def fp8_ratio(self) -> float:
        """FP8/BF16 GEMM efficiency ratio of this GPU (measured per architecture, ``fp8.yaml``)."""
        ratio = fp8_gemm_ratio(self.gpu.name)
        return _FP8_RATIO_FALLBACK if ratio is None else ratio

    def fp8_cast(self, elements: float, transpose: bool, tensors: int = 1) -> KernelTime:
        """Quantise ``tensors`` 16-bit tensors of ``elements`` in all to FP8: read 2 bytes, write 1 byte, and 1
        more for the transposed (column-wise) copy the weight-gradient GEMM needs. By recipe (Transformer
        Engine 2.9, ``cast.cpp`` ``multi_tensor_quantize_impl``, ``quantizer.cpp``):

        * ``delayed``: the scale comes from the amax history, so the cast records the amax as it goes, and
          one fused kernel casts every tensor (``nvte_multi_cast_transpose``);
        * ``current``: the scale needs this tensor's amax first: an amax pass reading the tensor, then the
          cast; per tensor ``fp8_cast_kernels`` launches (TE: zero the amax, amax, scale, cast);
        * ``mxfp8`` / ``blockwise`` / ``rowwise``: one scale per block of 32 (1×128, one row) elements, found
          in the cast kernel itself; one launch per tensor, row- and column-wise data written together.
        """
        per_element = self.element_bytes + 1 + (1 if transpose else 0)
        if self.fp8_recipe == "current":
            per_element += self.element_bytes  # the amax pass reads the tensor once more
        kernels = 1 if self.fp8_recipe == "delayed" else tensors * self.fp8_cast_kernels
        return self.elementwise(elements * per_element, kernels=kernels, kind=KernelClass.FP8_CAST)

    def elementwise(
        self,
        nbytes: float,
        flops: float = 0.0,
        kernels: int = 1,
        *,
        kind: KernelClass = KernelClass.ELEMENTWISE,
    ) -> KernelTime:
        """``kernels`` memory-bound kernels moving ``nbytes`` to and from HBM in all (``kind``: their class, e.g.
        ``OPTIMIZER`` for the optimizer update, which is memory bound too)."""
        t = nbytes / self.memory_bytes_per_s + kernels * self.calib.kernel_gap_s
        return KernelTime(t, flops, nbytes, kernels * self.kernel_launch_s, class_seconds(kind, t))

    def attention_efficiency(
        self, backward: bool, seq_k: float, head_dim: int, causal: bool, window: float | None = None
    ) -> float:
        """Fraction of the 16-bit peak a fused attention kernel reaches: the measured kernel model of this
        GPU's architecture and implementation (``attention.py``), else the profile's constant."""
        k = attention_kernel(self.gpu.name, self.attention_impl, "bwd" if backward else "fwd")
        if k is not None:
            return k.efficiency(seq_k, head_dim, causal, window)
        a = self.calib.attention
        return a.flash_backward_efficiency if backward else a.flash_forward_efficiency

    def flash_attention(
        self,
        flops: float,
        nbytes: float,
        backward: bool,
        *,
        seq_k: float = 8192.0,
        head_dim: int = 128,
        causal: bool = True,
        window: float | None = None,
    ) -> KernelTime:
        """A fused attention kernel doing ``flops`` (already halved for causal masking) over ``nbytes``, whose
        query tiles each see ``seq_k`` keys (the causal prefix counted whole), or a band of ``window`` keys."""
        eff = self.attention_efficiency(backward, seq_k, head_dim, causal, window) * self.calib.clock_scale
        t = max(flops / (self.attention_peak_flops_per_s * eff), nbytes / self.memory_bytes_per_s)
        t += self.calib.kernel_gap_s
        classes = class_seconds(KernelClass.ATTENTION, t)
        return KernelTime(t, flops, nbytes, self.kernel_launch_s, classes)
