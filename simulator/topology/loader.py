"""Topology files → ``Cluster``.

A topology document (``topologies/*.yaml``, format in ``docs/topologies.md``) names a host builder for
its servers (``host:``, or ``host_groups:`` for a heterogeneous cluster) and a fabric builder that joins
them. ``build_cluster`` validates it (unknown keys, bad values → ``ScenarioError`` naming the file and
the field) and builds the graph with the conventions of ``simulator/topology/cluster.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Annotated, Any

import networkx as nx
import numpy as np
from pydantic import Field, model_validator
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from simulator.errors import ScenarioError, shorten
from simulator.files import read_yaml, resolve_reference, shipped_file
from simulator.files import shipped_dir as shipped_dir  # re-exported: validation and tests use it here
from simulator.hardware.gpu import GpuSpec, get_gpu
from simulator.limits import MAX_GPUS, MAX_HOST_GPUS, MAX_NODES, MAX_TOPOLOGY_COUNT, MAX_TOPOLOGY_NUMBER
from simulator.registry import FABRIC_BUILDERS, HOST_BUILDERS
from simulator.topology.builders.base import (
    BuildContext,
    FabricBuilder,
    GraphBuilder,
    HostBuilder,
    HostPorts,
    PosInt,
    Strict,
    _FieldError,
    validate,
)
from simulator.topology.cluster import Cluster, LinkArrays


def shipped_topology(name: str) -> Path | None:
    """The shipped topology file called ``name`` (a bare name, with or without ``.yaml``), if any."""
    return shipped_file("topologies", name)


# ---------------------------------------------------------------------------------------------- schema
class HostGroup(Strict):
    """``count`` identical hosts described by ``host``."""

    host: dict[str, Any]
    count: PosInt
    name: str = ""


class TopologyDoc(Strict):
    """The top level of a topology file; ``host``/``fabric`` are checked by their builders' schemas."""

    name: str | None = None
    description: str = ""
    source: str | list[str] = ""
    nodes: Annotated[int, Field(gt=0, le=MAX_NODES)] | None = (
        None  # hosts; a scenario overrides it (cluster: {topology: ..., nodes: 128})
    )
    host: dict[str, Any] | None = None
    host_groups: list[HostGroup] | None = None
    fabric: dict[str, Any] = {"builder": "none"}

    @model_validator(mode="after")
    def _one_host_kind(self) -> TopologyDoc:
        if (self.host is None) == (self.host_groups is None):
            raise _FieldError(
                "host", "give exactly one of host (all hosts alike) or host_groups (heterogeneous)"
            )
        if self.host_groups is not None and not self.host_groups:
            raise _FieldError("host_groups", "must list at least one group")
        return self


@dataclass(frozen=True)
class _Group:
    builder: HostBuilder
    spec: Any
    count: int
    gpu: GpuSpec
    field: str


# ---------------------------------------------------------------------------------------------- build
def _builder_name(raw: Any, *, file: str, field: str) -> str:
    if not isinstance(raw, dict):
        raise ScenarioError(f"must be a mapping (got {type(raw).__name__})", file=file, field=field)
    name = raw.get("builder")
    if name is None:
        raise ScenarioError("required key is missing", file=file, field=f"{field}.builder")
    return str(name)


def _host_group(raw: dict[str, Any], count: int, *, file: str, field: str) -> _Group:
    """Validate one host spec with its builder's schema."""
    builder_cls = HOST_BUILDERS.get(
        _builder_name(raw, file=file, field=field), file=file, field=f"{field}.builder"
    )
    spec = validate(builder_cls.schema, raw, file=file, field=field)
    if spec.gpus > MAX_HOST_GPUS:
        raise ScenarioError(
            f"{shorten(spec.gpus)} GPUs in one host; at most {MAX_HOST_GPUS:,} (the largest NVLink domain "
            "announced is NVL576)",
            file=file,
            field=f"{field}.gpus",
        )
    gpu = get_gpu(spec.gpu, file=file, field=f"{field}.gpu")
    return _Group(builder_cls(), spec, count, gpu, field)


def _groups(top: TopologyDoc, *, file: str) -> list[_Group]:
    """The host groups of the document, with ``nodes`` applied."""
    if top.host is not None:
        return [_host_group(top.host, top.nodes or 1, file=file, field="host")]
    assert top.host_groups is not None
    groups = [
        _host_group(hg.host, hg.count, file=file, field=f"host_groups[{i}].host")
        for i, hg in enumerate(top.host_groups)
    ]
    total = sum(g.count for g in groups)
    if top.nodes is not None and top.nodes != total:
        raise ScenarioError(
            f"{top.nodes} does not match the {total} hosts of host_groups; valid: {total} "
            "(change the groups' count to resize a heterogeneous cluster)",
            file=file,
            field="nodes",
        )
    return groups


def _to_graph(g: GraphBuilder) -> nx.Graph:
    """The networkx graph of ``g``, filled in bulk: the same node and adjacency dicts, in the same order, as
    ``add_nodes_from`` then ``add_edges_from`` make (tests/test_topology_bulk.py compares), without their per-item checks
    and attribute-dict copies (issue #11: 1.1 M directed links at 131,072 GPUs). The builder's attribute
    dicts become the graph's (the builder is dropped after the build); an edge's one dict is shared by
    both ends' adjacency entries, as networkx does. Safe because ``GraphBuilder`` already guarantees
    what networkx checks: unique node names, no self-loops, one entry per node pair."""
    graph = nx.Graph()
    adj: dict[str, dict[str, dict[str, object]]] = {n: {} for n in g.nodes}
    for (a, b), d in g.edges.items():
        adj[a][b] = d
        adj[b][a] = d
    graph._node.update(g.nodes)
    graph._adj.update(adj)
    nx._clear_cache(graph)
    return graph


def _endpoints(g: GraphBuilder) -> tuple[np.ndarray, np.ndarray]:
    """Node indices (in ``g.nodes`` order, networkx's) of both ends of every edge, in ``g.edges`` order."""
    index = {n: i for i, n in enumerate(g.nodes)}
    m = len(g.edges)
    a = np.fromiter(map(index.__getitem__, map(itemgetter(0), g.edges)), dtype=np.int64, count=m)
    b = np.fromiter(map(index.__getitem__, map(itemgetter(1), g.edges)), dtype=np.int64, count=m)
    return a, b


def _link_arrays(g: GraphBuilder, a: np.ndarray, b: np.ndarray) -> LinkArrays:
    """The directed links of ``_to_graph(g)`` as ``Cluster`` numbers them, straight from the builder (``a``,
    ``b``: ``_endpoints(g)``).

    networkx lists an edge once, from whichever end comes first in node order, and a node's edges in the
    order they were added; ``Cluster`` then numbers its two directions, that end's first."""
    m = len(g.edges)
    first, second = np.minimum(a, b), np.maximum(a, b)
    order = np.argsort(first, kind="stable")  # by the first end, then in insertion order
    data = list(g.edges.values())
    cap = np.fromiter(map(itemgetter("bandwidth_bytes_per_s"), data), dtype=np.float64, count=m)[order]
    lat = np.fromiter(map(itemgetter("latency_s"), data), dtype=np.float64, count=m)[order]
    types = [data[i]["link_type"] for i in order.tolist()]
    u, v = first[order], second[order]
    return LinkArrays(
        src=np.stack([u, v], axis=1).ravel(),
        dst=np.stack([v, u], axis=1).ravel(),
        capacity_bytes_per_s=np.repeat(cap, 2),
        latency_s=np.repeat(lat, 2),
        link_type=tuple(t for t in types for _ in range(2)),
    )


def _check_connected(g: GraphBuilder, a: np.ndarray, b: np.ndarray, *, file: str) -> None:
    """Every node must reach every other (an unconnected NIC or host is a topology mistake; ``a``, ``b``:
    ``_endpoints(g)``)."""
    n = len(g.nodes)
    if n < 2:
        return
    adj = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    count, labels = connected_components(adj, directed=False)
    if count > 1:
        names = list(g.nodes)
        lonely = names[int(np.flatnonzero(labels != labels[0])[0])]
        raise ScenarioError(
            f"the graph is not connected: {lonely} cannot reach {names[0]}; link it or remove it",
            file=file,
            field="fabric",
        )


def _meta(
    fabric_name: str, fabric_spec: Any, facts: dict[str, object], groups: list[_Group]
) -> dict[str, object]:
    """Builder facts for ``Cluster.meta``."""
    host_groups: list[dict[str, object]] = []
    first = 0
    for grp in groups:
        info = {"hosts": [first, first + grp.count], "builder": grp.spec.builder, "gpu": grp.spec.gpu}
        info |= {"gpus": grp.spec.gpus, "nics": getattr(grp.spec, "nics", 0)} | grp.builder.facts(grp.spec)
        host_groups.append(info)
        first += grp.count
    any_nics = any(getattr(grp.spec, "nics", 0) for grp in groups)
    gpus_per_host = {grp.spec.gpus for grp in groups}
    return {
        "fabric": fabric_name,
        "routing": "switched" if any_nics else "direct",
        "ecmp": getattr(fabric_spec, "ecmp", "destination"),
        **facts,
        "hosts": first,
        "gpus_per_host": gpus_per_host.pop() if len(gpus_per_host) == 1 else None,
        "nvls": all(bool(h.get("nvls")) for h in host_groups),
        "host_groups": host_groups,
    }


def _numbers_problem(node: Any, path: str) -> tuple[str, str] | None:
    """(field, reason) of the first number of a topology document that is not finite or is past the
    bounds of ``simulator.limits``, or None. Builders' schemas check meaning; this keeps every one of
    them away from inf, NaN and 10^30 hosts (issue #12)."""
    if isinstance(node, bool):
        return None
    if isinstance(node, int):
        if abs(node) > MAX_TOPOLOGY_COUNT:
            return path, f"{shorten(node)} is past any real cluster; at most {MAX_TOPOLOGY_COUNT:,}"
        return None
    if isinstance(node, float):
        if not math.isfinite(node):
            return path, f"{node} is not a finite number"
        if abs(node) > MAX_TOPOLOGY_NUMBER:
            return path, f"{node:g} is past any real link; at most {MAX_TOPOLOGY_NUMBER:g}"
        return None
    if isinstance(node, dict):
        items: Any = node.items()
    elif isinstance(node, list):
        items = ((f"[{i}]", v) for i, v in enumerate(node))
    else:
        return None
    for key, value in items:
        sub = f"{path}{key}" if str(key).startswith("[") else (f"{path}.{key}" if path else str(key))
        found = _numbers_problem(value, sub)
        if found is not None:
            return found
    return None


@dataclass(frozen=True)
class _Checked:
    top: TopologyDoc
    groups: list[_Group]
    fabric_name: str
    fabric_cls: type[FabricBuilder]
    fabric_spec: Any
    total_gpus: int


def _check(doc: dict[str, Any], *, file: str) -> _Checked:
    found = _numbers_problem(doc, "")
    if found is not None:
        raise ScenarioError(found[1], file=file, field=found[0] or None)
    top = validate(TopologyDoc, doc, file=file, field="")
    groups = _groups(top, file=file)
    fabric_name = _builder_name(top.fabric, file=file, field="fabric")
    fabric_cls = FABRIC_BUILDERS.get(fabric_name, file=file, field="fabric.builder")
    fabric_spec = validate(fabric_cls.schema, top.fabric, file=file, field="fabric")
    total_gpus = sum(grp.count * grp.spec.gpus for grp in groups)
    if total_gpus > MAX_GPUS:
        raise ScenarioError(
            f"{total_gpus:,} GPUs; at most {MAX_GPUS:,} (over twice the largest cluster announced)",
            file=file,
            field="nodes",
        )
    return _Checked(top, groups, fabric_name, fabric_cls, fabric_spec, total_gpus)


def check_topology(doc: dict[str, Any], *, file: str) -> int:
    """Validate a topology document without building its graph (cheap: a sweep checks every point's
    cluster up front); returns its GPU count."""
    return _check(doc, file=file).total_gpus


def build_cluster(doc: dict[str, Any], *, file: str) -> Cluster:
    """Build the cluster a topology document describes (``nodes`` already overridden)."""
    checked = _check(doc, file=file)
    top, groups, total_gpus = checked.top, checked.groups, checked.total_gpus
    fabric_name, fabric_cls, fabric_spec = checked.fabric_name, checked.fabric_cls, checked.fabric_spec
    g = GraphBuilder()
    hosts: list[HostPorts] = []
    gpu_specs: list[GpuSpec] = []
    for grp in groups:
        ctx = BuildContext(file, total_gpus, grp.field)
        for _ in range(grp.count):
            hosts.append(grp.builder.build(grp.spec, g, len(hosts), len(gpu_specs), ctx))
            gpu_specs.extend([grp.gpu] * grp.spec.gpus)
    fabric: FabricBuilder = fabric_cls()
    facts = fabric.build(fabric_spec, g, hosts, BuildContext(file, total_gpus))
    ends = _endpoints(g)
    _check_connected(g, *ends, file=file)
    source = top.source if isinstance(top.source, str) else "; ".join(top.source)
    return Cluster(
        name=top.name or Path(file).stem,
        graph=_to_graph(g),
        gpu_specs=tuple(gpu_specs),
        source=source,
        description=top.description,
        meta=_meta(fabric_name, fabric_spec, facts, groups),
        link_arrays=_link_arrays(g, *ends),
    )


def load_topology(path: str | Path, *, nodes: int | None = None, field: str | None = None) -> Cluster:
    """Read a topology file (a path relative to the working directory, or the bare name of a shipped
    topology such as ``dgx-h100``) and build it."""
    p = resolve_reference(
        str(path), Path.cwd(), kind="topologies", what="topology file", file=None, field=field
    )
    raw = read_yaml(p, "topology file")
    if not isinstance(raw, dict):
        raise ScenarioError("a topology file must be a mapping", file=str(p))
    if nodes is not None:
        raw["nodes"] = nodes
    return build_cluster(raw, file=str(p))
