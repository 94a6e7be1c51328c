"""Bare hosts: chips with no links inside the host, for fabrics that link chips directly (a TPU-like
torus: every chip's inter-chip links are fabric links, ``fabric.builder: torus``)."""

from __future__ import annotations

from typing import Any

from simulator.registry import HOST_BUILDERS
from simulator.topology.builders._parts import add_gpus
from simulator.topology.builders.base import BuildContext, GraphBuilder, HostBuilder, HostPorts, HostSpec


@HOST_BUILDERS.register("bare")
class BareHost(HostBuilder):
    """Only GPU (chip) nodes; the fabric builder links them."""

    schema = HostSpec

    def build(self, spec: Any, g: GraphBuilder, host: int, first_gpu: int, ctx: BuildContext) -> HostPorts:
        """Add the chips of one host."""
        return HostPorts(host, add_gpus(g, spec.gpu, spec.gpus, host, first_gpu), ())

    def facts(self, spec: Any) -> dict[str, object]:
        """No scale-up switch inside the host."""
        return {"scale_up": "none", "nvls": False}
