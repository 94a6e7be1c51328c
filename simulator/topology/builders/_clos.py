"""Switch tiers above the leaves of a folded Clos (fat-tree), shared by ``fat_tree`` and
``rail_optimized``: spines (2 tiers), or pods of spines plus core groups (3 tiers).

Sizing follows the NVIDIA DGX SuperPOD reference architectures: the fewest spines that take every leaf
uplink, with parallel leaf-spine cables where a spine has ports to spare (DGX H100 SuperPOD RA,
"Compute fabric component count": 1 SU = 8 leaves + 4 spines, 4 SU = 32 leaves + 16 spines, each leaf 32
up; DGX B200 SuperPOD RA: 16 SU = 128 leaves, 128 spines, 64 cores; 64 SU = 512 / 512 / 256). Parallel
cables between one pair become one edge carrying their summed capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from pydantic import model_validator

from simulator.errors import ScenarioError
from simulator.topology.builders.base import (
    BuildContext,
    GraphBuilder,
    PosInt,
    SwitchedFabricSpec,
    _FieldError,
    fabric_edge,
)


class ClosSpec(SwitchedFabricSpec):
    """Keys of a fat-tree-like fabric."""

    radix: PosInt  # ports per switch (QM8700 HDR: 40; QM9700 NDR: 64)
    tiers: int | str = "auto"  # 2, 3, or auto (the fewest that fit)
    oversubscription: float = 1.0  # leaf down:up bandwidth ratio; 1.0 = full bisection, 8.0 = 8:1

    @model_validator(mode="after")
    def _clos(self) -> ClosSpec:
        if self.tiers not in (2, 3, "auto"):
            raise _FieldError("tiers", f"{self.tiers!r} is not supported; valid: 2, 3, auto")
        if not self.oversubscription > 0:
            raise _FieldError(
                "oversubscription", f"{self.oversubscription} is not valid; valid: > 0 (1.0 = full bisection)"
            )
        if self.radix < 4 or self.radix % 2:
            raise _FieldError("radix", f"{self.radix} is not valid; valid: an even port count >= 4")
        return self


@dataclass(frozen=True)
class Tiers:
    """What was built above the leaves."""

    tiers: int
    spines: int
    cores: int


def smallest_divisor_at_least(n: int, lower: int) -> int:
    """The smallest divisor of ``n`` that is >= ``lower`` (``n`` itself at worst)."""
    return next(d for d in range(max(1, lower), n + 1) if n % d == 0)


def choose_tiers(spec: ClosSpec, leaves: int, pod: int, ctx: BuildContext) -> int:
    """1, 2 or 3 tiers: as asked, or the fewest that fit; too many leaves is a user error."""
    fits2 = leaves <= spec.radix  # every spine has one port per leaf at most
    fits3 = math.ceil(leaves / pod) <= spec.radix  # pods of ``pod`` leaves, one core port each
    if spec.tiers == "auto":
        if leaves == 1:
            return 1  # one leaf is the whole fabric: no spines
        if fits2:
            return 2
        if fits3:
            return 3
    elif spec.tiers == 2 and fits2 or spec.tiers == 3 and fits3:
        return int(spec.tiers)
    cap2, cap3 = spec.radix, spec.radix * pod
    raise ScenarioError(
        f"{spec.tiers} cannot hold {leaves} leaf switches of radix {spec.radix} (2 tiers hold {cap2}, "
        f"3 tiers {cap3}); valid: {'3, auto' if fits3 else 'fewer nodes or a larger radix'}",
        file=ctx.file,
        field="fabric.tiers",
    )


def build_upper(
    g: GraphBuilder, leaves: list[str], up: int, spec: ClosSpec, ctx: BuildContext, pod: int | None = None
) -> Tiers:
    """Spines (and cores) above ``leaves``, each leaf with ``up`` uplinks; 3-tier pods hold ``pod``
    consecutive leaves (default radix/2, one spine port each)."""
    half = spec.radix // 2
    pod = min(pod or half, half)
    tiers = choose_tiers(spec, len(leaves), pod, ctx)
    bw, lat = fabric_edge(spec, ctx)
    if tiers == 1:
        return Tiers(1, 0, 0)
    if tiers == 2:
        n_spines = smallest_divisor_at_least(up, math.ceil(len(leaves) * up / spec.radix))
        spines = [g.node(f"spine{j}", kind="switch", tier=2) for j in range(n_spines)]
        for leaf in leaves:
            for spine in spines:
                g.link(leaf, spine, bw * (up // n_spines), lat, spec.link_type)
        return Tiers(2, n_spines, 0)
    pods = math.ceil(len(leaves) / pod)
    per_group = smallest_divisor_at_least(half, math.ceil(pods * half / spec.radix))
    cores = [g.node(f"core{c}", kind="switch", tier=3) for c in range(up * per_group)]
    for p in range(pods):
        pod_spines = [g.node(f"spine{p * up + j}", kind="switch", tier=2) for j in range(up)]
        for leaf in leaves[p * pod : (p + 1) * pod]:
            for spine in pod_spines:
                g.link(leaf, spine, bw, lat, spec.link_type)
        for j, spine in enumerate(pod_spines):
            for core in cores[j * per_group : (j + 1) * per_group]:
                g.link(spine, core, bw * (half // per_group), lat, spec.link_type)
    return Tiers(3, pods * up, len(cores))
