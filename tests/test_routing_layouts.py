"""The router's host layouts found by whole-row comparison (``_host_layouts``) against the per-host tuple
signatures (``_host_layouts_slow``)."""

from __future__ import annotations

import numpy as np
import pytest

from simulator.topology.loader import load_topology


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
    cluster = router.cluster
    src, dst = cluster.link_src, cluster.link_dst
    inner = np.flatnonzero(router._internal & (src < dst))
    inner = inner[np.argsort(router.host[src[inner]], kind="stable")]
    split = np.searchsorted(router.host[src[inner]], np.arange(router.blocks.shape[0] + 1))
    fast_first, fast_layout = router._host_layouts(inner, split)
    slow_first, slow_layout = router._host_layouts_slow(inner, split)
    np.testing.assert_array_equal(fast_first, slow_first)
    np.testing.assert_array_equal(fast_layout, slow_layout)
    np.testing.assert_array_equal(router.host_template, slow_layout)


def test_hetero_cluster_has_two_layouts() -> None:
    router = load_topology("hetero-a100-h100").router
    assert len(router.templates) >= 2
