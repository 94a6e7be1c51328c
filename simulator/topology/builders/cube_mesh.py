"""Hosts whose GPUs are joined by direct NVLink bundles, without an NVSwitch: the DGX-1 (V100) hybrid
cube-mesh by default, or any list of GPU pairs (``nvlink_links``)."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from simulator.registry import HOST_BUILDERS
from simulator.topology.builders._parts import add_cpus, add_gpus, add_pcie_and_nics
from simulator.topology.builders.base import (
    BuildContext,
    CpuHostSpec,
    GraphBuilder,
    HostBuilder,
    HostPorts,
    NonNegFloat,
    PosFloat,
    _FieldError,
    default_latency_s,
    gbps,
)

# DGX-1 with V100: each GPU has 6 NVLink2 links; the cube's 12 edges are all linked (some with two
# links) and two faces have their diagonals linked (NVIDIA DGX-1 with Tesla V100 System Architecture
# whitepaper WP-08437-002, "hybrid cube-mesh"). (a, b, links) as `nvidia-smi topo -m` shows it on a
# DGX-1V (NV1/NV2); the first quad matches a published topo matrix, the rest is (unverified).
DGX1_V100_LINKS: tuple[tuple[int, int, int], ...] = (
    (0, 1, 1), (0, 2, 1), (0, 3, 2), (0, 4, 2),
    (1, 2, 2), (1, 3, 1), (1, 5, 2),
    (2, 3, 2), (2, 6, 1),
    (3, 7, 1),
    (4, 5, 1), (4, 6, 1), (4, 7, 2),
    (5, 6, 2), (5, 7, 1),
    (6, 7, 2),
)  # fmt: skip


class CubeMeshHostSpec(CpuHostSpec):
    """``builder: cube_mesh``: direct NVLink bundles between GPU pairs; PCIe through CPUs otherwise."""

    nvlink_link_gbps: PosFloat  # ONE NVLink link, per direction, GB/s (NVLink2: 25)
    nvlink_type: str = "nvlink2"
    nvlink_latency_s: NonNegFloat | None = None
    nvlink_links: list[tuple[int, int, int]] | None = None  # (gpu a, gpu b, links); default DGX-1V

    @model_validator(mode="after")
    def _links(self) -> CubeMeshHostSpec:
        if not self.nvlink_type.startswith("nvlink"):
            raise _FieldError("nvlink_type", f"{self.nvlink_type!r} is not an NVLink type; e.g. nvlink2")
        if self.nvlink_links is None and self.gpus != 8:
            raise _FieldError("nvlink_links", f"the default DGX-1 cube-mesh has 8 GPUs (gpus={self.gpus})")
        for a, b, n in self.nvlink_links or ():
            if not (0 <= a < self.gpus and 0 <= b < self.gpus and a != b and n > 0):
                raise _FieldError("nvlink_links", f"bad link ({a}, {b}, {n}) for {self.gpus} GPUs")
        return self


@HOST_BUILDERS.register("cube_mesh")
class CubeMeshHost(HostBuilder):
    """GPU ↔ GPU NVLink bundles; PCIe switches under the CPUs carry NIC traffic."""

    schema = CubeMeshHostSpec

    def build(self, spec: Any, g: GraphBuilder, host: int, first_gpu: int, ctx: BuildContext) -> HostPorts:
        """Add one cube-mesh host."""
        gpus = add_gpus(g, spec.gpu, spec.gpus, host, first_gpu)
        lat = spec.nvlink_latency_s
        if lat is None:
            lat = default_latency_s(
                spec.nvlink_type, file=ctx.file, field=f"{ctx.host_field}.nvlink_latency_s"
            )
        for a, b, n in spec.nvlink_links or DGX1_V100_LINKS:
            g.link(gpus[a], gpus[b], n * gbps(spec.nvlink_link_gbps), lat, spec.nvlink_type)
        cpus = add_cpus(g, spec, host, ctx, ctx.host_field)
        nics = add_pcie_and_nics(g, spec, host, gpus, cpus, ctx, ctx.host_field)
        return HostPorts(host, gpus, nics, gbps(spec.nic_gbps or 0), spec.nic_type or "")

    def facts(self, spec: Any) -> dict[str, object]:
        """Scale-up kind: direct NVLink, no in-switch reduction."""
        return {"scale_up": "nvlink_mesh", "nvlink_type": spec.nvlink_type, "nvls": False}
