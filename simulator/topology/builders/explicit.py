"""Explicit fabric: switches and links listed one by one in the topology file. Links may join any two
nodes: listed switches, or host nodes by name (``h0/nic3``, ``h2/gpu0`` ...)."""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from simulator.errors import ScenarioError
from simulator.registry import FABRIC_BUILDERS
from simulator.topology.builders.base import (
    BuildContext,
    FabricBuilder,
    GraphBuilder,
    HostPorts,
    NonNegFloat,
    NonNegInt,
    PosFloat,
    PosInt,
    RoutedFabricSpec,
    Strict,
    _FieldError,
    default_latency_s,
    gbps,
)


class SwitchEntry(Strict):
    """One switch of an explicit fabric."""

    name: str
    tier: NonNegInt = 1


class LinkEntry(Strict):
    """One link (or ``count`` parallel links) of an explicit fabric."""

    a: str
    b: str
    gbps: PosFloat  # per link per direction, GB/s
    link_type: str
    latency_s: NonNegFloat | None = None
    count: PosInt = 1


class ExplicitSpec(RoutedFabricSpec):
    """``builder: explicit``."""

    switches: list[SwitchEntry] = []
    links: list[LinkEntry]

    @model_validator(mode="after")
    def _names(self) -> ExplicitSpec:
        names = [s.name for s in self.switches]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise _FieldError("switches", f"switch {dup!r} is listed twice")
        return self


@FABRIC_BUILDERS.register("explicit")
class Explicit(FabricBuilder):
    """Adds the listed switches and links."""

    schema = ExplicitSpec

    def build(
        self, spec: Any, g: GraphBuilder, hosts: list[HostPorts], ctx: BuildContext
    ) -> dict[str, object]:
        """Add every listed switch and link; unknown node names are user errors."""
        for i, sw in enumerate(spec.switches):
            if sw.name in g.nodes:
                raise ScenarioError(
                    f"{sw.name!r} is already a host node", file=ctx.file, field=f"fabric.switches[{i}].name"
                )
            g.node(sw.name, kind="switch", tier=sw.tier)
        for i, link in enumerate(spec.links):
            for end in ("a", "b"):
                name = getattr(link, end)
                if name not in g.nodes:
                    raise ScenarioError(
                        f"unknown node {name!r}; valid: a switch of fabric.switches or a host node like h0/nic0",
                        file=ctx.file,
                        field=f"fabric.links[{i}].{end}",
                    )
            if link.a == link.b:
                raise ScenarioError(
                    "a link needs two different nodes", file=ctx.file, field=f"fabric.links[{i}]"
                )
            lat = link.latency_s
            if lat is None:
                lat = default_latency_s(link.link_type, file=ctx.file, field=f"fabric.links[{i}].latency_s")
            g.link(link.a, link.b, link.count * gbps(link.gbps), lat, link.link_type)
        tiers = max((s.tier for s in spec.switches), default=0)
        return {"tiers": tiers, "rail_optimized": False, "switches": {"total": len(spec.switches)}}
