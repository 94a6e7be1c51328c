"""Warnings a buyer needs about the layout itself (issue #10, point 9), derived from the cluster and plan, and
about settings of the scenario that the step does not model yet.

Tensor parallelism runs several collectives per layer on the critical path (Megatron-LM, Shoeybi et al.
2019, §3: two all-reduces per layer forward, two backward), which is why it is kept inside the NVLink
domain; a tp group that spans domains sends them over the inter-host fabric, an order of magnitude
narrower per GPU (e.g. DGX H100: NVLink 450 GB/s vs one 400 Gb/s NDR NIC, 50 GB/s, per direction). The
simulator times that correctly; the warning says why such a layout is slow.
"""

from __future__ import annotations

import numpy as np

from simulator.parallel.plan import ParallelPlan
from simulator.scenario import Scenario
from simulator.topology.cluster import Cluster
from simulator.workload.ops import Axis


def tp_domain_warning(cluster: Cluster, plan: ParallelPlan) -> str | None:
    """A warning when some tensor-parallel group spans more than one NVLink domain; None otherwise."""
    groups = plan.groups(Axis.TP)
    if groups.shape[1] < 2:
        return None
    domain = cluster.nvlink_domain_of_gpu[groups]
    crossing = np.flatnonzero((domain != domain[:, :1]).any(axis=1))
    if crossing.size == 0:
        return None
    per_domain = int(np.bincount(cluster.nvlink_domain_of_gpu).max())
    hosts = int(np.unique(cluster.host_of_gpu[groups[crossing[0]]]).size)
    fabric = sorted(
        {t for t, tier in zip(cluster.link_type, cluster.link_tier, strict=True) if tier == "nic-leaf"}
    )
    over = f" ({', '.join(fabric)})" if fabric else ""
    return (
        f"tensor parallelism leaves the NVLink domain: tp {groups.shape[1]} > {per_domain} GPUs per NVLink "
        f"domain, so {crossing.size} of {groups.shape[0]} tp groups span {hosts} hosts and run their "
        f"per-layer collectives over the inter-host fabric{over}; keep tp <= {per_domain}"
    )


def unmodelled_settings(scenario: Scenario) -> str | None:
    """A warning naming the scenario's settings that the schema records (they are in the published run's
    configuration) but the step does not model yet, so a reader knows the prediction ignores them; None
    when every setting given is modelled."""
    t, p = scenario.training, scenario.parallelism
    found = []
    if t.selective_recompute == "op_level" and scenario.model.moe is not None:
        found.append("training.selective_recompute=op_level on MoE layers (their activations are kept whole)")
    if p.moe_a2a_overlap and p.pp > 1 and p.schedule == "1f1b":  # elsewhere merged pairs are modelled
        found.append("parallelism.moe_a2a_overlap with the 1f1b schedule at pp > 1 (Megatron-Core's combined 1F1B "
                     "needs virtual stages there; the all-to-alls run exposed)")
    if p.moe_dispatcher == "allgather":
        found.append("parallelism.moe_dispatcher=allgather (runs as alltoall)")
    if not found:
        return None
    return "recorded but not modelled: " + "; ".join(found)
