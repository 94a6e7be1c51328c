"""The router's host layouts found by whole-row comparison (``_host_layouts``) against per-host tuple
signatures (``_host_layouts_by_tuples``, the reference: the router's grouping before issue #11)."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.topology.loader import load_topology
from simulator.topology.routing import Router


def _host_layouts_by_tuples(router: Router, inner: np.ndarray, split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first host of each layout, layout of each host), each host's layout a tuple signature, host by host."""
    src, dst = router.cluster.link_src, router.cluster.link_dst
    n_hosts = router.blocks.shape[0]
    layout = np.zeros(n_hosts, dtype=np.int64)
    first: list[int] = []
    types = router.cluster.link_type
    seen: dict[tuple, int] = {}
    for h in range(n_hosts):
        links = inner[split[h] : split[h + 1]]
        nodes = router.blocks[h][router.blocks[h] >= 0]
        sig = (
            tuple(router.kind[nodes]),
            tuple(router.gpu_local[nodes]),
            tuple(router.rail[nodes]),
            tuple(zip(router.local[src[links]], router.local[dst[links]], (types[i] for i in links), strict=True)),
            tuple(router.cluster.link_capacity_bytes_per_s[links]),
        )
        t = seen.get(sig)
        if t is None:
            t = seen[sig] = len(first)
            first.append(h)
        layout[h] = t
    return np.asarray(first, dtype=np.int64), layout


@pytest.mark.parametrize(
    ("topology", "nodes"),
    [
        ("dgx-h100", 8),
        ("dgx-h100-xdr", 4),
        ("dgx-a100-superpod", 6),
        ("dgx1-v100", 3),
        ("gb200-nvl72", None),
        ("hetero-a100-h100", None),
        ("hgx-b200", 2),
        ("grand-teton-h100", 2),
    ],
)
def test_host_layouts_equal_tuple_signatures(topology: str, nodes: int | None) -> None:
    router = load_topology(topology, nodes=nodes).router
    if router.direct:
        pytest.skip("direct fabrics have no host templates")
    inner, split = router._host_links()
    fast_first, fast_layout = router._host_layouts(inner, split)
    slow_first, slow_layout = _host_layouts_by_tuples(router, inner, split)
    np.testing.assert_array_equal(fast_first, slow_first)
    np.testing.assert_array_equal(fast_layout, slow_layout)
    np.testing.assert_array_equal(router.host_template, slow_layout)


def test_hetero_cluster_has_two_layouts() -> None:
    router = load_topology("hetero-a100-h100").router
    assert len(router.templates) >= 2
