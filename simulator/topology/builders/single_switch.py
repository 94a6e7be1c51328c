"""Every host NIC on one switch (a small cluster, e.g. a DGX BasePOD leaf, or an idealised crossbar)."""

from __future__ import annotations

from typing import Any

from simulator.errors import ScenarioError
from simulator.registry import FABRIC_BUILDERS
from simulator.topology.builders.base import (
    BuildContext,
    FabricBuilder,
    GraphBuilder,
    HostPorts,
    PosInt,
    SwitchedFabricSpec,
    attach_nic,
)


class SingleSwitchSpec(SwitchedFabricSpec):
    """``builder: single_switch``; ``radix`` (optional) bounds the number of NICs."""

    radix: PosInt | None = None


@FABRIC_BUILDERS.register("single_switch")
class SingleSwitch(FabricBuilder):
    """One switch, ``leaf0``."""

    schema = SingleSwitchSpec

    def build(
        self, spec: Any, g: GraphBuilder, hosts: list[HostPorts], ctx: BuildContext
    ) -> dict[str, object]:
        """Attach every NIC to one switch."""
        ports = sum(len(h.nics) for h in hosts)
        if spec.radix is not None and ports > spec.radix:
            raise ScenarioError(
                f"{ports} NICs do not fit on one switch of radix {spec.radix}; valid: fat_tree or rail_optimized",
                file=ctx.file,
                field="fabric.builder",
            )
        switch = g.node("leaf0", kind="switch", tier=1)
        for host in hosts:
            for nic in host.nics:
                attach_nic(g, nic, host, switch, spec, ctx)
        return {"tiers": 1, "radix": spec.radix, "rail_optimized": False, "switches": {"leaf": 1}}
