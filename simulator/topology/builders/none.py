"""No fabric: one host on its own (its NICs, if any, stay unconnected)."""

from __future__ import annotations

from typing import Any

from simulator.errors import ScenarioError
from simulator.registry import FABRIC_BUILDERS
from simulator.topology.builders.base import BuildContext, FabricBuilder, FabricSpec, GraphBuilder, HostPorts


@FABRIC_BUILDERS.register("none")
class NoFabric(FabricBuilder):
    """Valid for a single host only."""

    schema = FabricSpec

    def build(
        self, spec: Any, g: GraphBuilder, hosts: list[HostPorts], ctx: BuildContext
    ) -> dict[str, object]:
        """Check there is one host; add nothing."""
        if len(hosts) > 1:
            raise ScenarioError(
                f"none connects no hosts, but the cluster has {len(hosts)}; "
                "valid: fat_tree, rail_optimized, single_switch, torus, explicit",
                file=ctx.file,
                field="fabric.builder",
            )
        return {"tiers": 0, "rail_optimized": False, "switches": {}}
