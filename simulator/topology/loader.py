"""Topology files → ``Cluster``. (Stub: to be implemented by the topology work.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import simulator
from simulator.topology.cluster import Cluster


def shipped_dir(kind: str) -> Path | None:
    """The folder of shipped ``topologies`` or ``scenarios``: inside the installed wheel
    (``simulator/_shipped/<kind>``) or, in a source checkout, at the repository root."""
    pkg = Path(simulator.__file__).resolve().parent
    for cand in (pkg / "_shipped" / kind, pkg.parent / kind):
        if cand.is_dir():
            return cand
    return None


def shipped_topology(name: str) -> Path | None:
    """The shipped topology file called ``name`` (with or without ``.yaml``), if there is one."""
    folder = shipped_dir("topologies")
    if folder is None:
        return None
    stem = name[:-5] if name.endswith(".yaml") else name
    cand = folder / f"{Path(stem).name}.yaml"
    return cand if cand.is_file() else None


def build_cluster(doc: dict[str, Any], *, file: str) -> Cluster:
    """Build the cluster a topology document describes (``nodes`` already overridden)."""
    raise NotImplementedError
