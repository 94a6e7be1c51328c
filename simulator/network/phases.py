"""Flows of a collective, grouped into phases.

A collective algorithm turns ``(kind, groups, bytes)`` into a list of phases run one after the other.
The flows of one phase move concurrently and in lockstep (a pipelined ring moves at the pace of its
slowest hop), so a phase ends when all its flows have moved their bytes. Each phase also pays ``steps``
latency terms (the α of the α-β model; Thakur, Rabenseifner & Gropp 2005), priced by the network model
from the calibrated per-step latency of the links it crosses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class Phase:
    """Concurrent flows ``src[i] → dst[i]`` (graph node indices) of ``bytes[i]`` each."""

    src: np.ndarray
    dst: np.ndarray
    bytes: np.ndarray
    steps: int  # latency-bound algorithm steps in this phase
    label: str = ""
    efficiency_key: str = "ring"  # which calibrated protocol efficiency applies ("ring", "nvls", "p2p" ...)

    def __post_init__(self) -> None:
        assert self.src.shape == self.dst.shape == self.bytes.shape, "flow arrays must align"
        assert self.steps >= 0

    @property
    def num_flows(self) -> int:
        """Number of flows."""
        return int(self.src.size)

    @property
    def total_bytes(self) -> float:
        """Bytes moved by all flows of the phase."""
        return float(self.bytes.sum())
