"""Simulated vs measured NCCL bus bandwidth (nccl-tests, large messages): ``data/nccl-busbw.yaml``.

Each measured point names a system; it is simulated on the shipped topology of that system with the
point's node count, over every GPU (or, for a NIC figure, one GPU on each of two hosts), at the point's
message size (8 GiB where the source gives none: the file's points are ≥ 1 GiB), with the point's
algorithm when it names one and NCCL-like ``auto`` otherwise. Used by ``tests/test_network_model.py``, by
``python -m simulator.calibrate links`` (the fit) and by ``clustersim validate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import yaml

from simulator.hardware.calibration import LinkCalibration, link_calibration
from simulator.network.bench import bench, request_groups
from simulator.topology.cluster import Cluster
from simulator.topology.loader import load_topology
from simulator.units import GiB
from simulator.workload.ops import CollectiveKind

DATA_FILE = "nccl-busbw.yaml"
DEFAULT_SIZE_BYTES = int(8 * GiB)  # nccl-tests' usual -e 8G; the file's points are large-message plateaus

# system name in the data → (shipped topology, GPUs per host to use; None = all)
SYSTEMS: dict[str, tuple[str, int | None]] = {
    "dgx-a100": ("dgx-a100", None),
    "dgx-h100": ("dgx-h100", None),
    # one 400 Gb/s NDR NIC per direction: a GPU on each of two DGX H100 (ConnectX-7 NDR) hosts
    "ndr-400g-nic": ("dgx-h100", 1),
}


@dataclass(frozen=True)
class MeasuredBusbw:
    """One measured nccl-tests bus bandwidth."""

    system: str
    op: CollectiveKind
    gpus: int
    nodes: int
    busbw_GBps: float
    algorithm: str | None
    size_bytes: int
    source: str


@dataclass(frozen=True, eq=False)
class PreparedPoint:
    """A measured point with its simulated cluster and groups, built once."""

    point: MeasuredBusbw
    cluster: Cluster
    groups: np.ndarray


def _point(doc: dict[str, Any]) -> MeasuredBusbw:
    system = str(doc["system"])
    _, per_host = SYSTEMS[system]
    nodes = int(doc.get("nodes", 2 if per_host == 1 else 1))
    gpus = int(doc.get("gpus", nodes * (per_host or 0)))
    return MeasuredBusbw(
        system=system,
        op=CollectiveKind(doc["op"]),
        gpus=gpus,
        nodes=nodes,
        busbw_GBps=float(doc["busbw_gbps"]),  # the published data file keeps its key (GB/s)
        algorithm=doc.get("algorithm"),
        size_bytes=int(doc.get("size_bytes", DEFAULT_SIZE_BYTES)),
        source=str(doc.get("source", "")),
    )


def measured_points() -> list[MeasuredBusbw]:
    """Every point of the packaged ``nccl-busbw.yaml``, in file order."""
    text = resources.files("simulator.validation").joinpath("data", DATA_FILE).read_text()
    return [_point(p) for p in yaml.safe_load(text)["points"]]


def prepare(points: list[MeasuredBusbw]) -> list[PreparedPoint]:
    """Build each point's cluster (once per system and node count) and its groups."""
    clusters: dict[tuple[str, int], Cluster] = {}
    out = []
    for p in points:
        topology, per_host = SYSTEMS[p.system]
        key = (topology, p.nodes)
        if key not in clusters:
            clusters[key] = load_topology(topology, nodes=p.nodes)
        cluster = clusters[key]
        members = np.flatnonzero(cluster.local_of_gpu < (per_host or cluster.num_gpus))
        if members.size != p.gpus:
            raise ValueError(f"{p.system}: {members.size} GPUs simulated for a {p.gpus}-GPU measurement")
        out.append(PreparedPoint(p, cluster, request_groups(p.op, members)))
    return out


def predict(
    prepared: PreparedPoint,
    calib: LinkCalibration | None = None,
    *,
    network: str = "flow",
    algorithm: str | None = None,
) -> tuple[float, str]:
    """(simulated busbw in GB/s, algorithm used) of one measured point."""
    p = prepared.point
    algo = algorithm or p.algorithm or "auto"
    (row,) = bench(
        prepared.cluster,
        p.op,
        [p.size_bytes],
        algorithm=algo,
        network=network,
        groups=prepared.groups,
        calib=calib or link_calibration(),
    )
    return row.busbw_GBps, row.algorithm


def nccl_rows(calib: LinkCalibration | None = None, *, network: str = "flow") -> list[dict[str, object]]:
    """Measured vs simulated busbw of every point: {system, op, gpus, nodes, algorithm,
    measured_busbw_GBps, predicted_busbw_GBps, error} with error = predicted / measured - 1."""
    rows: list[dict[str, object]] = []
    for prep in prepare(measured_points()):
        p = prep.point
        busbw, algo = predict(prep, calib, network=network)
        rows.append(
            {
                "system": p.system,
                "op": p.op.value,
                "gpus": p.gpus,
                "nodes": p.nodes,
                "algorithm": algo,
                "measured_busbw_GBps": p.busbw_GBps,
                "predicted_busbw_GBps": busbw,
                "error": busbw / p.busbw_GBps - 1.0,
            }
        )
    return rows
