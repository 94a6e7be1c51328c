"""``clustersim collective``: an nccl-tests-like benchmark of one collective on a simulated fabric.

The timing and nccl-tests' algbw/busbw are ``simulator/network/bench.py``'s. Sizes double from the first to
the last, as nccl-tests' ``-b``/``-e``/``-f 2`` with K, M, G = 2^10, 2^20, 2^30 bytes. The group is every GPU
of the cluster (or ``--gpus N`` spread evenly over the hosts, the first N/hosts GPUs of each, as
``mpirun --map-by ppr:N/hosts:node`` would place them).
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import asdict

import numpy as np

from simulator.errors import ScenarioError
from simulator.files import finite_json
from simulator.network.bench import BenchRow, bench, member_gpus, request_groups
from simulator.workload.ops import CollectiveKind

# nccl-tests size suffixes (src/common.cu, parsesize: K, M, G are powers of 1024)
_SUFFIX = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)\s*$", re.IGNORECASE)
MAX_SIZES = 64  # a doubling range from 1 byte to 8 EiB has 64 sizes; more means a typo






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
