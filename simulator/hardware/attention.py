"""Fused (flash) attention kernels: throughput as a function of sequence length, head dimension, causal masking
and direction, per implementation (FlashAttention-2, cuDNN fused attention, FlashAttention-3) and GPU
architecture, with constants fitted to published kernel measurements (``attention.yaml``, written by
``python -m simulator.calibrate attention`` from ``kernels/<gpu>.yaml``).

Mechanism (Dao 2023; Shah et al. 2024): a fused kernel walks the score matrix in ``block × block`` tiles, one
thread block per query tile. Each query tile pays a fixed cost (load Q, softmax epilogue, write O and the
log-sum-exp), worth ``block_overhead`` key tiles of main loop. With ``n`` key tiles per query tile,

* non-causal: ``rate = peak · n / (n + c)``;
* causal: query tile i visits ``i + 1`` key tiles, the diagonal one half useful, so over ``n`` tiles
  ``rate = peak · κ · n / (n + 1 + 2c)``, with κ the cost of the masking inside the loop.

* sliding window of ``w`` keys (``window``, causal): every query tile visits the ``n = w / block`` key tiles
  of its band plus the one the band's edge cuts, whatever the sequence length, so
  ``rate = peak · κ · n / (n + 1 + c)`` (the band's two edge tiles are masked, as the causal diagonal is);
  FlashAttention-2/3's ``window_size`` skips the tiles outside the band (Dao 2023, FA2 ``local`` attention).

The head dimension sets the work per loaded tile: ``peak(d) = peak(128) · [d / (d + d0)] / [128 / (128 + d0)]``.
FLOPs are counted as FlashAttention's benchmarks count them (causal halved; backward 2.5× forward).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

BLOCK = 128  # query/key tile of the Hopper and Ampere kernels at head dim 64-256 (FA2/FA3 defaults)
REFERENCE_HEAD_DIM = 128


@dataclass(frozen=True)
class AttentionKernel:
    """One implementation, one direction, on one GPU architecture."""

    peak_fraction: float  # asymptotic rate at head dim 128, non-causal, as a fraction of the dense BF16 peak
    block_overhead: float  # fixed cost per query tile, in key tiles (c)
    causal_factor: float  # κ: masked main loop relative to the unmasked one
    head_dim_half: float  # d0
    source: str = ""

    def efficiency(self, seq_k: float, head_dim: int, causal: bool, window: float | None = None) -> float:
        """Fraction of the dense BF16 peak reached on ``seq_k`` keys per query (``window``: a sliding window of
        that many keys, when shorter than ``seq_k``)."""
        n = max(seq_k / BLOCK, 1.0)
        d0 = self.head_dim_half
        hd = (head_dim / (head_dim + d0)) / (REFERENCE_HEAD_DIM / (REFERENCE_HEAD_DIM + d0))
        if window is not None and window < seq_k:
            n = max(window / BLOCK, 1.0)
            shape = self.causal_factor * n / (n + 1 + self.block_overhead)
        elif causal:
            shape = self.causal_factor * n / (n + 1 + 2 * self.block_overhead)
        else:
            shape = n / (n + self.block_overhead)
        return min(self.peak_fraction * hd * shape, 1.0)


@cache
def _doc() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(
        resources.files("simulator.hardware").joinpath("attention.yaml").read_text()
    )
    return doc


def attention_kernel(gpu: str, impl: str, direction: str) -> AttentionKernel | None:
    """The fitted kernel of ``impl`` (``fa2``, ``cudnn``, ``fa3``) for ``direction`` (``fwd``/``bwd``) on
    ``gpu``'s architecture, or None where nothing was measured."""
    k = _arch_kernels(gpu).get(impl, {}).get(direction)
    return None if k is None else AttentionKernel(**k)


def attention_impls(gpu: str) -> tuple[str, ...]:
    """The implementations with a kernel model on ``gpu``'s architecture."""
    return tuple(_arch_kernels(gpu))


def _arch_kernels(gpu: str) -> dict[str, Any]:
    """The kernels of ``gpu``'s architecture in attention.yaml (empty where none is modelled)."""
    for arch in _doc()["architectures"].values():
        if gpu in arch["gpus"]:
            kernels: dict[str, Any] = arch["kernels"]
            return kernels
    return {}
