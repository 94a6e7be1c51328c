"""``clustersim collective``: an nccl-tests-like benchmark of one collective on a simulated fabric.

Each message size is timed on its own, on an otherwise idle network: the request goes through the chosen
network model inside a fresh simpy environment (flow), or through ``alone_time`` (analytical). The table
reports nccl-tests' quantities (NVIDIA/nccl-tests ``doc/PERFORMANCE.md``): algbw = S/t and
busbw = algbw × 2(n-1)/n for all-reduce, × (n-1)/n for reduce-scatter, all-gather and all-to-all
(S = the total buffer), × 1 for broadcast and send/recv. Sizes double from the first to the last, as
nccl-tests' ``-b``/``-e``/``-f 2`` with K, M, G = 2^10, 2^20, 2^30 bytes.

The group is every GPU of the cluster (or ``--gpus N`` spread evenly over the hosts, the first N/hosts
GPUs of each, as ``mpirun --map-by ppr:N/hosts:node`` would place them). Send/recv runs as nccl-tests'
``sendrecv_perf``: every rank sends to the next member and receives from the previous one, all at once.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import asdict, dataclass

import numpy as np
import simpy

from simulator.errors import ScenarioError
from simulator.files import finite_json
from simulator.hardware.calibration import LinkCalibration, link_calibration
from simulator.network.collectives.base import ALGORITHMS
from simulator.network.models.base import NETWORK_MODELS, CollectiveRequest, PhaseCache, alone_time
from simulator.topology.cluster import Cluster
from simulator.workload.ops import CollectiveKind

# nccl-tests size suffixes (src/common.cu, parsesize: K, M, G are powers of 1024)
_SUFFIX = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*$", re.IGNORECASE)
MAX_SIZES = 64  # a doubling range from 1 byte to 8 EiB has 64 sizes; more means a typo


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


def parse_size(text: str, *, field: str = "--sizes") -> int:
    """``"8G"`` → 8·2^30 bytes; plain digits are bytes (nccl-tests' -b/-e syntax)."""
    m = _SIZE_RE.match(text)
    if m is None or int(m.group(1)) <= 0:
        raise ScenarioError(
            f"{text!r} is not a size; valid: a positive byte count with an optional K, M or G "
            "(powers of 1024), e.g. 1M, 8G, 4096",
            field=field,
        )
    return int(m.group(1)) * _SUFFIX[m.group(2).upper()]


def parse_sizes(text: str) -> list[int]:
    """``"1M:8G"`` → 1 MiB, 2 MiB, ... 8 GiB (doubling); a single size is a range of one."""
    first, sep, last = text.partition(":")
    lo = parse_size(first)
    hi = parse_size(last) if sep else lo
    if hi < lo:
        raise ScenarioError(
            f"{text!r} ends below where it starts; valid: START:END with START <= END, e.g. 1M:8G",
            field="--sizes",
        )
    sizes = [lo]
    while sizes[-1] * 2 <= hi:
        sizes.append(sizes[-1] * 2)
    if len(sizes) > MAX_SIZES:
        raise ScenarioError(f"{text!r} spans more than {MAX_SIZES} doublings", field="--sizes")
    return sizes


def parse_op(text: str) -> CollectiveKind:
    """The collective kind named ``text`` (``all_reduce``, ``all_gather`` ...)."""
    try:
        return CollectiveKind(text.replace("-", "_").lower())
    except ValueError:
        valid = ", ".join(k.value for k in CollectiveKind)
        raise ScenarioError(f"unknown op {text!r}; valid: {valid}", field="--op") from None


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


# ---------------------------------------------------------------------------------------------- output
def _table(rows: list[BenchRow], title: str) -> str:
    lines = [
        f"# {title}",
        f"# {'size':>12} {'time':>12} {'algbw':>9} {'busbw':>9}  algorithm",
        f"# {'(B)':>12} {'(us)':>12} {'(GB/s)':>9} {'(GB/s)':>9}",
    ]
    for r in rows:
        lines.append(
            f"  {r.size_bytes:>12d} {r.time_s * 1e6:>12.2f} {r.algbw_GBps:>9.2f} {r.busbw_GBps:>9.2f}  {r.algorithm}"
        )
    avg = sum(r.busbw_GBps for r in rows) / len(rows)
    lines.append(f"# Avg bus bandwidth    : {avg:.2f} GB/s")
    return "\n".join(lines) + "\n"


def collective_command(args: argparse.Namespace) -> int:
    """Parse, build the cluster, time every size, print the table or one JSON object."""
    from simulator.topology.loader import load_topology

    kind = parse_op(args.op)
    sizes = parse_sizes(args.sizes)
    cluster = load_topology(args.cluster, nodes=args.nodes)
    groups = request_groups(kind, member_gpus(cluster, args.gpus))
    rows = bench(cluster, kind, sizes, algorithm=args.algorithm, network=args.network, groups=groups)
    gpus = int(np.unique(groups).size)
    if args.json:
        doc = {
            "rows": [asdict(r) for r in rows],
            "cluster": cluster.name,
            "nodes": cluster.num_hosts,
            "gpus": gpus,
            "op": kind.value,
            "algorithm": args.algorithm,
            "network": args.network,
        }
        sys.stdout.write(finite_json(doc) + "\n")
    else:
        title = (
            f"clustersim collective: {kind.value} on {gpus} GPUs ({cluster.num_hosts} node(s) of "
            f"{cluster.name}), algorithm {args.algorithm}, {args.network} network"
        )
        sys.stdout.write(_table(rows, title))
    return 0
