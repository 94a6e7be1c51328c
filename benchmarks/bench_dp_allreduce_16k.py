"""One data-parallel all-reduce across 16,384 GPUs through the flow model, with the wall time of each part.

Layout: 2,048 DGX H100 hosts on the shipped 3-tier NDR fat-tree (``topologies/dgx-h100.yaml``), ranks as
Megatron orders them for tp=8 · pp=16 · dp=128, so that the DP groups are 128 rings of 128 GPUs (one GPU
per host, all on one rail) running at once and sharing the fabric. Parts:

* build: topology file → cluster graph and its link arrays;
* route: the router, the ring's phases and every flow's ECMP path and link loads (``PhaseCache.routed``);
* simulate: the request through ``FlowNetwork`` in a fresh simpy environment.

Target (issue #3): route + simulate under 2 s. Run: ``python benchmarks/bench_dp_allreduce_16k.py``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import simpy

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from simulator.hardware.calibration import link_calibration  # noqa: E402
from simulator.network.bench import bus_factor  # noqa: E402
from simulator.network.models.base import CollectiveRequest, PhaseCache  # noqa: E402
from simulator.network.models.flow import FlowNetwork  # noqa: E402
from simulator.parallel.plan import ParallelDims, ParallelPlan  # noqa: E402
from simulator.topology.loader import load_topology  # noqa: E402
from simulator.units import GiB  # noqa: E402
from simulator.workload.ops import CollectiveKind  # noqa: E402

TARGET_S = 2.0


def main(argv: list[str] | None = None) -> int:
    """Build, route, simulate; print the wall time of each part and the simulated busbw."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--algorithm", default="ring", help="collective algorithm (default ring; auto tries all)")
    ap.add_argument("--size-gib", type=float, default=1.0, help="per-rank buffer in GiB (default 1)")
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    cluster = load_topology("dgx-h100", nodes=2048)
    _ = cluster.link_capacity_bytes_per_s, cluster.gpu_node_index
    t1 = time.perf_counter()

    groups = ParallelPlan(ParallelDims(tp=8, pp=16, dp=128)).groups("dp")
    cache = PhaseCache(cluster, link_calibration(), args.algorithm)
    req = CollectiveRequest(CollectiveKind.ALL_REDUCE, groups, args.size_gib * GiB, ("dp",))
    phases = cache.routed(req)
    t2 = time.perf_counter()

    env = simpy.Environment()
    net = FlowNetwork(env, cache)
    done: list[float] = []
    net.run(req, lambda: done.append(float(env.now)))
    env.run()
    t3 = time.perf_counter()

    flows = sum(p.phase.num_flows for p in phases)
    busbw = req.nbytes / done[0] * bus_factor(req.kind, groups.shape[1]) / 1e9
    print(f"cluster: {cluster.num_gpus} GPUs, {len(cluster.node_names)} nodes, "
          f"{cluster.link_src.size} directed links, {cluster.meta['tiers']} tiers")  # fmt: skip
    print(f"request: {groups.shape[0]} concurrent {cache.choose(req)} all-reduces of {groups.shape[1]} GPUs, "
          f"{flows} flows, {args.size_gib:g} GiB each")  # fmt: skip
    print(f"simulated: {done[0] * 1e3:.2f} ms, busbw {busbw:.1f} GB/s")
    print(f"wall: build {t1 - t0:.3f} s | route {t2 - t1:.3f} s | simulate {t3 - t2:.3f} s")
    sim = t3 - t1
    print(f"route + simulate {sim:.3f} s (target < {TARGET_S:g} s): {'ok' if sim < TARGET_S else 'SLOW'}")
    return 0 if sim < TARGET_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
