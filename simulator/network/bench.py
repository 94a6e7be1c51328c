"""An nccl-tests-like benchmark of one collective on a simulated fabric (used by ``clustersim collective``
and by the NCCL bus-bandwidth validation suite).

Each message size is timed on its own, on an otherwise idle network: the request goes through the chosen
network model inside a fresh simpy environment (flow), or through ``alone_time`` (analytical). algbw = S/t and
busbw = algbw × 2(n-1)/n for all-reduce, × (n-1)/n for reduce-scatter, all-gather and all-to-all (S = the total
buffer), × 1 for broadcast and send/recv (NVIDIA/nccl-tests ``doc/PERFORMANCE.md``). Send/recv runs as
nccl-tests' ``sendrecv_perf``: every rank sends to the next member and receives from the previous one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import simpy

from simulator.errors import ScenarioError
from simulator.hardware.calibration import LinkCalibration, link_calibration
from simulator.network.models.base import CollectiveRequest, PhaseCache, alone_time
from simulator.registry import ALGORITHMS, NETWORK_MODELS
from simulator.topology.cluster import Cluster
from simulator.workload.ops import CollectiveKind


@dataclass(frozen=True)
class BenchRow:
    """One message size of the table."""

    size_bytes: int
    time_s: float
    # GB/s (10**9 bytes per second), as nccl-tests prints them; "GBps", not "gbps", which reads as gigabits
    algbw_GBps: float
    busbw_GBps: float
    algorithm: str


def bus_factor(kind: CollectiveKind, n: int) -> float:
    """busbw / algbw for ``kind`` on ``n`` ranks (nccl-tests doc/PERFORMANCE.md)."""
    if kind is CollectiveKind.ALL_REDUCE:
        return 2 * (n - 1) / n
    if kind in (CollectiveKind.REDUCE_SCATTER, CollectiveKind.ALL_GATHER, CollectiveKind.ALL_TO_ALL):
        return (n - 1) / n
    return 1.0


def member_gpus(cluster: Cluster, gpus: int | None) -> np.ndarray:
    """GPU ids of the group: all, or ``gpus`` spread evenly over the hosts (first GPUs of each)."""
    if gpus is None or gpus == cluster.num_gpus:
        return np.arange(cluster.num_gpus, dtype=np.int64)
    hosts = cluster.num_hosts
    per_host = np.bincount(cluster.host_of_gpu, minlength=hosts)
    if gpus < 2 or gpus > cluster.num_gpus or gpus % hosts or gpus // hosts > per_host.min():
        raise ScenarioError(
            f"{gpus} GPUs cannot be spread evenly over the {hosts} host(s) of {cluster.name}; valid: a "
            f"multiple of {hosts} between {max(2, hosts)} and {hosts * int(per_host.min())}",
            field="--gpus",
        )
    keep = cluster.local_of_gpu < gpus // hosts
    return np.flatnonzero(keep).astype(np.int64)


def request_groups(kind: CollectiveKind, members: np.ndarray) -> np.ndarray:
    """``[instances, members]`` groups of the benchmark: one group, or nccl-tests' send/recv ring pairs."""
    if members.size < 2:
        raise ScenarioError("a collective needs at least 2 GPUs", field="--gpus")
    if kind is CollectiveKind.SEND_RECV:
        return np.stack([members, np.roll(members, -1)], axis=1)
    return members[None, :]


def check_algorithm(algorithm: str, kind: CollectiveKind, groups: np.ndarray, cluster: Cluster) -> None:
    """Raise a user error if ``algorithm`` is unknown or cannot run ``kind`` on these groups."""
    if algorithm == "auto":
        return
    cls = ALGORITHMS.get(algorithm, field="--algorithm")
    runnable = [n for n in ALGORITHMS.names() if ALGORITHMS.get(n)().supports(kind, groups, cluster)]
    if kind is CollectiveKind.SEND_RECV:  # PhaseCache always sends point-to-point with p2p
        runnable = [n for n in runnable if n == "p2p"]
    if algorithm not in runnable:
        what = (
            f"{groups.shape[0]} send/recv pairs"
            if kind is CollectiveKind.SEND_RECV
            else f"{groups.shape[1]} GPUs"
        )
        raise ScenarioError(
            f"{cls.name} cannot run {kind.value} on {what} of {cluster.name}; "
            f"valid: {', '.join(['auto', *runnable])}",
            field="--algorithm",
        )


def time_request(cache: PhaseCache, req: CollectiveRequest, network: str) -> float:
    """Seconds ``req`` takes alone: through the network model in a fresh environment, or ``alone_time``."""
    if network == "analytical":
        return alone_time(cache.routed(req))
    env = simpy.Environment()
    model = NETWORK_MODELS.get(network, field="--network")(env, cache)
    done: list[float] = []
    model.run(req, lambda: done.append(float(env.now)))
    env.run()
    assert len(done) == 1, "the collective never finished"
    return done[0]


def bench(
    cluster: Cluster,
    kind: CollectiveKind,
    sizes: list[int],
    *,
    algorithm: str = "auto",
    network: str = "flow",
    groups: np.ndarray | None = None,
    calib: LinkCalibration | None = None,
) -> list[BenchRow]:
    """Time ``kind`` at each size on ``cluster`` (default group: every GPU) and derive algbw and busbw."""
    groups = request_groups(kind, member_gpus(cluster, None)) if groups is None else groups
    check_algorithm(algorithm, kind, groups, cluster)
    NETWORK_MODELS.get(network, field="--network")
    cache = PhaseCache(cluster, calib or link_calibration(), algorithm)
    n = groups.shape[1] if kind is not CollectiveKind.SEND_RECV else groups.shape[0]
    factor = bus_factor(kind, n)
    rows = []
    for size in sizes:
        req = CollectiveRequest(kind, groups, float(size), ("collective", kind.value, groups.tobytes()))
        t = time_request(cache, req, network)
        algbw = size / t / 1e9 if t > 0 else float("inf")
        rows.append(BenchRow(size, t, algbw, algbw * factor, cache.choose(req)))
    return rows
