"""NVSwitch hosts (DGX/HGX A100, H100, H200, B200): every GPU has one NVLink bundle to the host's
NVSwitch fabric, modelled as one ``h{i}/nvsw`` node (the 4-6 NVSwitch chips act as one non-blocking
crossbar for GPU-to-GPU traffic: NVIDIA DGX A100 / H100 system architecture documents)."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from simulator.registry import HOST_BUILDERS
from simulator.topology.builders._parts import add_gpus, add_pcie_and_nics
from simulator.topology.builders.base import (
    NVLS_LINK_TYPES,
    BuildContext,
    GraphBuilder,
    HostBuilder,
    HostPorts,
    NicHostSpec,
    NonNegFloat,
    PosFloat,
    _FieldError,
    default_latency_s,
    gbps,
)


class NvSwitchHostSpec(NicHostSpec):
    """``builder: nvswitch``: GPUs on an NVSwitch crossbar, NICs on PCIe."""

    nvlink_gbps: PosFloat  # per GPU per direction, GB/s (A100 300, H100 450, B200 900)
    nvlink_type: str  # nvlink3 (A100), nvlink4 (H100/H200), nvlink5 (B200)
    nvlink_latency_s: NonNegFloat | None = None
    nvls: bool | None = None  # in-switch reduction (NVLink SHARP); default: NVLink4 and later

    @model_validator(mode="after")
    def _nvlink(self) -> NvSwitchHostSpec:
        if not self.nvlink_type.startswith("nvlink"):
            raise _FieldError(
                "nvlink_type", f"{self.nvlink_type!r} is not an NVLink type; e.g. nvlink3, nvlink4"
            )
        if self.nvls and self.nvlink_type not in NVLS_LINK_TYPES:
            raise _FieldError("nvls", f"NVLink SHARP needs {' or '.join(sorted(NVLS_LINK_TYPES))}")
        return self

    @property
    def in_switch_reduction(self) -> bool:
        """Whether the NVSwitch can reduce in the switch (NVLS)."""
        return self.nvls if self.nvls is not None else self.nvlink_type in NVLS_LINK_TYPES


@HOST_BUILDERS.register("nvswitch")
class NvSwitchHost(HostBuilder):
    """GPUs ↔ one NVSwitch node; GPUs/NICs on PCIe."""

    schema = NvSwitchHostSpec

    def build(self, spec: Any, g: GraphBuilder, host: int, first_gpu: int, ctx: BuildContext) -> HostPorts:
        """Add one NVSwitch host."""
        gpus = add_gpus(g, spec.gpu, spec.gpus, host, first_gpu)
        nvsw = g.node(f"h{host}/nvsw", kind="nvswitch", host=host)
        lat = spec.nvlink_latency_s
        if lat is None:
            lat = default_latency_s(
                spec.nvlink_type, file=ctx.file, field=f"{ctx.host_field}.nvlink_latency_s"
            )
        for gpu in gpus:
            g.link(gpu, nvsw, gbps(spec.nvlink_gbps), lat, spec.nvlink_type)
        nics = add_pcie_and_nics(g, spec, host, gpus, (), ctx, ctx.host_field)
        return HostPorts(host, gpus, nics, gbps(spec.nic_gbps or 0), spec.nic_type or "")

    def facts(self, spec: Any) -> dict[str, object]:
        """Scale-up kind and whether NVLS in-switch reduction is available."""
        return {"scale_up": "nvswitch", "nvlink_type": spec.nvlink_type, "nvls": spec.in_switch_reduction}
