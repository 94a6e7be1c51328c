"""Rail-optimized fabric (NVIDIA DGX SuperPOD): hosts are grouped in scalable units (SU) of ``su_hosts``;
NIC k of every host of an SU attaches to that SU's rail-k leaf, so same-rail traffic inside an SU is one
switch hop (DGX H100 SuperPOD RA, "Compute fabric": "Each group of 32 nodes is rail-aligned. Traffic per
rail ... is always one hop away from the other 31 nodes in a SU. Traffic between nodes, or between rails,
traverses the spine layer"). Leaves have ``su_hosts`` down ports and ``ceil(su_hosts / r)`` uplinks;
spines and cores are sized as for the fat-tree (``_clos``)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import model_validator

from simulator.errors import ScenarioError
from simulator.registry import FABRIC_BUILDERS
from simulator.topology.builders._clos import ClosSpec, build_upper
from simulator.topology.builders.base import (
    BuildContext,
    FabricBuilder,
    GraphBuilder,
    HostPorts,
    PosInt,
    _FieldError,
    attach_nic,
)


class RailSpec(ClosSpec):
    """``builder: rail_optimized``."""

    su_hosts: PosInt  # hosts per scalable unit (DGX A100 SuperPOD: 20, DGX H100/B200 SuperPOD: 32)

    @model_validator(mode="after")
    def _fits(self) -> RailSpec:
        if not self.oversubscription > 0:
            return self  # reported by ClosSpec
        up = math.ceil(self.su_hosts / self.oversubscription)
        if self.su_hosts + up > self.radix:
            raise _FieldError(
                "su_hosts",
                f"{self.su_hosts} hosts need {self.su_hosts} down + {up} up ports on a rail leaf, "
                f"more than radix {self.radix}; valid: <= {math.floor(self.radix * self.oversubscription / (1 + self.oversubscription))}",
            )
        return self


@FABRIC_BUILDERS.register("rail_optimized")
class RailOptimized(FabricBuilder):
    """One leaf per (scalable unit, rail); spines (and cores) above."""

    schema = RailSpec

    def build(
        self, spec: Any, g: GraphBuilder, hosts: list[HostPorts], ctx: BuildContext
    ) -> dict[str, object]:
        """Add rail leaves, spines and cores."""
        rails = max((len(h.nics) for h in hosts), default=0)
        if rails == 0:
            raise ScenarioError(
                "a rail-optimized fabric needs hosts with NICs", file=ctx.file, field="fabric"
            )
        units = math.ceil(len(hosts) / spec.su_hosts)
        leaves = []
        for su in range(units):
            for r in range(rails):
                leaves.append(g.node(f"leaf{su * rails + r}", kind="switch", tier=1, rail=r))
        for i, host in enumerate(hosts):
            su = i // spec.su_hosts
            for r, nic in enumerate(host.nics):
                attach_nic(g, nic, host, leaves[su * rails + r], spec, ctx)
        up = math.ceil(spec.su_hosts / spec.oversubscription)
        # 3-tier pods take whole scalable units, so an SU's rails share their spines
        pod = (spec.radix // 2 // rails) * rails or None
        tiers = build_upper(g, leaves, up, spec, ctx, pod)
        return {
            "tiers": tiers.tiers,
            "radix": spec.radix,
            "oversubscription": spec.su_hosts / up,
            "rail_optimized": True,
            "rails": rails,
            "su_hosts": spec.su_hosts,
            "leaf_down_ports": spec.su_hosts,
            "leaf_up_ports": up,
            "switches": {"leaf": len(leaves), "spine": tiers.spines, "core": tiers.cores},
        }
