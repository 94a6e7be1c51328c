"""Torus fabric (TPU-like): chips linked directly to their neighbours along each dimension, with
wrap-around links (Cloud TPU v4 documentation: "v4 TPUs have a direct connection to the nearest
neighboring chips in 3 dimensions ... can be configured as a 3D torus"). Chip ``gpu_id`` sits at
coordinates ``numpy.unravel_index(gpu_id, dims)`` (C order: hosts hold consecutive chips along the last
dimension). A dimension of size 2 gets both of its links (one edge of twice the capacity); size 1 none."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import Field

from simulator.errors import ScenarioError
from simulator.registry import FABRIC_BUILDERS
from simulator.topology.builders.base import (
    BuildContext,
    FabricBuilder,
    GraphBuilder,
    HostPorts,
    NonNegFloat,
    PosFloat,
    PosInt,
    RoutedFabricSpec,
    default_latency_s,
    gbps,
)


class TorusSpec(RoutedFabricSpec):
    """``builder: torus``."""

    dims: list[PosInt] = Field(min_length=1)
    link_gbps: PosFloat  # per link per direction, GB/s
    link_type: str = "ici"
    latency_s: NonNegFloat | None = None
    wrap: bool = True  # False: a mesh


@FABRIC_BUILDERS.register("torus")
class Torus(FabricBuilder):
    """Direct chip-to-chip links on a (wrapped) grid."""

    schema = TorusSpec

    def build(
        self, spec: Any, g: GraphBuilder, hosts: list[HostPorts], ctx: BuildContext
    ) -> dict[str, object]:
        """Link every chip to its grid neighbours."""
        chips = [gpu for h in hosts for gpu in h.gpus]
        if math.prod(spec.dims) != len(chips):
            raise ScenarioError(
                f"{spec.dims} holds {math.prod(spec.dims)} chips but the hosts have {len(chips)}; "
                "valid: dims whose product is nodes x gpus",
                file=ctx.file,
                field="fabric.dims",
            )
        if any(h.nics for h in hosts):
            raise ScenarioError(
                "a torus links chips directly; hosts must have no NICs (builder: bare)",
                file=ctx.file,
                field="fabric.builder",
            )
        lat = spec.latency_s
        if lat is None:
            lat = default_latency_s(spec.link_type, file=ctx.file, field="fabric.latency_s")
        ids = np.arange(len(chips)).reshape(spec.dims)
        for axis, size in enumerate(spec.dims):
            if size == 1:
                continue
            last = size if spec.wrap else size - 1
            for k in range(last):
                a = np.take(ids, k, axis=axis).ravel()
                b = np.take(ids, (k + 1) % size, axis=axis).ravel()
                for i, j in zip(a.tolist(), b.tolist(), strict=True):
                    g.link(chips[i], chips[j], gbps(spec.link_gbps), lat, spec.link_type)
        return {"tiers": 0, "dims": list(spec.dims), "wrap": spec.wrap, "routing": "direct", "switches": {}}
