"""The loader's bulk graph build (``_to_graph``) against networkx's public API (``_via_networkx_api``, the
loader's build before issue #11)."""

from __future__ import annotations

import networkx as nx
import pytest

from simulator.topology import loader
from simulator.topology.builders.base import GraphBuilder


def _via_networkx_api(g: GraphBuilder) -> nx.Graph:
    graph = nx.Graph()
    graph.add_nodes_from(g.nodes.items())
    graph.add_edges_from((a, b, d) for (a, b), d in g.edges.items())
    return graph


def _same(fast: nx.Graph, slow: nx.Graph) -> None:
    assert list(fast.nodes(data=True)) == list(slow.nodes(data=True))
    assert list(fast.edges(data=True)) == list(slow.edges(data=True))
    for n in slow:  # adjacency order, both directions of each edge
        assert list(fast.adj[n].items()) == list(slow.adj[n].items())
    assert fast.number_of_edges() == slow.number_of_edges()
    assert nx.utils.graphs_equal(fast, slow)


@pytest.mark.parametrize(
    ("topology", "nodes"),
    [
        ("dgx-h100", 8),
        ("dgx-h100-xdr", 4),
        ("dgx-a100-superpod", 6),
        ("dgx1-v100", 2),
        ("gb200-nvl72", None),
        ("hetero-a100-h100", None),
        ("torus-3d-example", None),
        ("explicit-example", None),
    ],
)
def test_bulk_graph_equals_networkx_api(topology: str, nodes: int | None, monkeypatch) -> None:
    built: list[GraphBuilder] = []
    fast_build = loader._to_graph

    def spy(g: GraphBuilder) -> nx.Graph:
        built.append(g)
        return fast_build(g)

    monkeypatch.setattr(loader, "_to_graph", spy)
    cluster = loader.load_topology(topology, nodes=nodes)
    _same(cluster.graph, _via_networkx_api(built[0]))


def test_bulk_graph_parallel_links_and_fresh_nodes() -> None:
    g = GraphBuilder()
    for name in ("c", "a", "b", "d"):
        g.node(name, kind="switch", tier=1)
    g.link("c", "a", 1.0, 1e-6, "ib-ndr")
    g.link("a", "c", 2.0, 1e-6, "ib-ndr")  # a parallel link adds up
    g.link("b", "d", 3.0, 2e-6, "ib-hdr")
    g.link("d", "a", 4.0, 2e-6, "ib-hdr")
    fast = loader._to_graph(g)
    _same(fast, _via_networkx_api(g))
    fast.add_edge("b", "c")  # the bulk-built graph stays an ordinary, mutable networkx graph
    assert fast.has_edge("c", "b") and fast.degree("a") == 2
