"""Fat-tree (folded Clos) fabric: host NICs fill leaf switches in order (host by host, NIC by NIC); a
leaf of radix k with oversubscription r has u = floor(k / (1 + r)) uplinks and d = floor(u * r) down
ports; 2 tiers add spines, 3 tiers pods of spines and core switches (sizes in ``_clos``)."""

from __future__ import annotations

import math
from typing import Any

from simulator.errors import ScenarioError
from simulator.registry import FABRIC_BUILDERS
from simulator.topology.builders._clos import ClosSpec, build_upper
from simulator.topology.builders.base import BuildContext, FabricBuilder, GraphBuilder, HostPorts, attach_nic


def leaf_ports(spec: ClosSpec, ctx: BuildContext) -> tuple[int, int]:
    """(down, up) ports of a leaf for the radix and oversubscription."""
    up = math.floor(spec.radix / (1 + spec.oversubscription))
    down = math.floor(up * spec.oversubscription + 1e-9)
    if up < 1 or down < 1:
        raise ScenarioError(
            f"{spec.oversubscription} leaves no {'up' if up < 1 else 'down'} port on a radix-{spec.radix} leaf; "
            f"valid: between {1 / (spec.radix - 1):.3g} and {spec.radix - 1}",
            file=ctx.file,
            field="fabric.oversubscription",
        )
    return down, up


@FABRIC_BUILDERS.register("fat_tree")
class FatTree(FabricBuilder):
    """Leaves filled with consecutive NIC ports, then spines (and cores)."""

    schema = ClosSpec

    def build(
        self, spec: Any, g: GraphBuilder, hosts: list[HostPorts], ctx: BuildContext
    ) -> dict[str, object]:
        """Add leaves, spines and cores."""
        down, up = leaf_ports(spec, ctx)
        ports = [(h, nic) for h in hosts for nic in h.nics]
        if not ports:
            raise ScenarioError("a fat-tree needs hosts with NICs (nics > 0)", file=ctx.file, field="fabric")
        leaves = [g.node(f"leaf{i}", kind="switch", tier=1) for i in range(math.ceil(len(ports) / down))]
        for p, (host, nic) in enumerate(ports):
            attach_nic(g, nic, host, leaves[p // down], spec, ctx)
        tiers = build_upper(g, leaves, up, spec, ctx)
        return {
            "tiers": tiers.tiers,
            "radix": spec.radix,
            "oversubscription": down / up,
            "rail_optimized": False,
            "leaf_down_ports": down,
            "leaf_up_ports": up,
            "switches": {"leaf": len(leaves), "spine": tiers.spines, "core": tiers.cores},
        }
