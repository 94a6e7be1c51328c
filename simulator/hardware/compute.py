"""Compute model: the time of one kernel from its shape, FLOPs and bytes (roofline with shape-dependent
efficiency), for one GPU type and precision.

GEMM: a tensor-core GEMM runs as output tiles of ``tile_m × tile_n`` spread over the SMs in waves. Its time is
``waves × time-per-tile`` (tile and wave quantization, NVIDIA "Matrix Multiplication Background User's
Guide"), where a tile's main loop takes ``k/tile_k`` iterations plus a fixed prologue/epilogue of
``k_overhead_tiles`` iterations (software-pipelined main loop, CUTLASS), at the measured peak efficiency of
large GEMMs. The memory roofline (operands and result read/written once from HBM) bounds it from below.

Element-wise kernels are memory bound: bytes / (HBM bandwidth × achieved fraction).
Every kernel also pays the GPU-side gap between back-to-back kernels, and carries the host time needed to
launch it: a run of short kernels cannot finish faster than the framework launches them (CPU-bound).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simulator.hardware.calibration import ComputeCalibration
from simulator.hardware.gpu import GpuSpec
from simulator.units import BYTES_PER_ELEMENT


@dataclass(frozen=True)
class KernelTime:
    """Duration of one kernel and the work it does."""

    duration_s: float
    flops: float
    bytes: float
    launch_s: float = 0.0  # host time to launch it


@dataclass(frozen=True)
class ComputeModel:
    """Kernel durations on one GPU type at one training precision."""

    gpu: GpuSpec
    calib: ComputeCalibration
    precision: str

    @property
    def peak_flops_per_s(self) -> float:
        """Dense tensor-core peak at the training precision."""
        return self.gpu.peak(self.precision)

    @property
    def element_bytes(self) -> int:
        """Bytes per activation element at the training precision (fp8 GEMMs keep 16-bit activations)."""
        return 2 if self.precision == "fp8" else BYTES_PER_ELEMENT[self.precision]

    @property
    def memory_bytes_per_s(self) -> float:
        """Achieved HBM bandwidth of streaming kernels."""
        return self.gpu.hbm_bytes_per_s * self.calib.memory_efficiency

    def gemm(self, m: int, n: int, k: int, batch: int = 1) -> KernelTime:
        """``batch`` independent ``[m, k] × [k, n]`` GEMMs in one kernel."""
        g = self.calib.gemm
        flops = 2.0 * m * n * k * batch
        tiles = math.ceil(m / g.tile_m) * math.ceil(n / g.tile_n) * batch
        waves = math.ceil(tiles / self.gpu.sm_count)
        iterations = math.ceil(k / g.tile_k) + g.k_overhead_tiles
        per_sm_flops = self.peak_flops_per_s * g.max_efficiency / self.gpu.sm_count
        tile_s = 2.0 * g.tile_m * g.tile_n * g.tile_k * iterations / per_sm_flops
        nbytes = float(self.element_bytes * batch * (m * k + k * n + m * n))
        t = max(waves * tile_s, nbytes / self.memory_bytes_per_s)
        return KernelTime(t + self.calib.kernel_gap_s, flops, nbytes, self.calib.kernel_launch_s)

    def elementwise(self, nbytes: float, flops: float = 0.0) -> KernelTime:
        """A memory-bound kernel moving ``nbytes`` to and from HBM."""
        t = nbytes / self.memory_bytes_per_s + self.calib.kernel_gap_s
        return KernelTime(t, flops, nbytes, self.calib.kernel_launch_s)

    def flash_attention(self, flops: float, nbytes: float, backward: bool) -> KernelTime:
        """A fused attention kernel doing ``flops`` (already halved for causal masking) over ``nbytes``."""
        a = self.calib.attention
        eff = a.flash_backward_efficiency if backward else a.flash_forward_efficiency
        t = max(flops / (self.peak_flops_per_s * eff), nbytes / self.memory_bytes_per_s)
        return KernelTime(t + self.calib.kernel_gap_s, flops, nbytes, self.calib.kernel_launch_s)
