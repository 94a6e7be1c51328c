"""PCIe-only hosts (e.g. L40S or A100 PCIe servers without NVLink bridges): GPUs and NICs hang off
PCIe switches under the CPUs; GPU-to-GPU traffic crosses the PCIe tree (and QPI/UPI between CPUs)."""

from __future__ import annotations

from typing import Any

from simulator.registry import HOST_BUILDERS
from simulator.topology.builders._parts import add_cpus, add_gpus, add_pcie_and_nics
from simulator.topology.builders.base import (
    BuildContext,
    CpuHostSpec,
    GraphBuilder,
    HostBuilder,
    HostPorts,
    gbps,
)


@HOST_BUILDERS.register("pcie")
class PcieHost(HostBuilder):
    """GPUs and NICs on a PCIe tree; no scale-up links."""

    schema = CpuHostSpec

    def build(self, spec: Any, g: GraphBuilder, host: int, first_gpu: int, ctx: BuildContext) -> HostPorts:
        """Add one PCIe host."""
        gpus = add_gpus(g, spec.gpu, spec.gpus, host, first_gpu)
        cpus = add_cpus(g, spec, host, ctx, ctx.host_field)
        nics = add_pcie_and_nics(g, spec, host, gpus, cpus, ctx, ctx.host_field)
        return HostPorts(host, gpus, nics, gbps(spec.nic_gbps or 0), spec.nic_type or "")

    def facts(self, spec: Any) -> dict[str, object]:
        """No scale-up fabric."""
        return {"scale_up": "pcie", "nvls": False}
