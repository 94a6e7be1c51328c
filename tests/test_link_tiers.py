"""Link load per fabric tier (issue #10, point 2): every directed link belongs to a tier derived from its
endpoints (NVLink, host PCIe, NIC-leaf, leaf-spine, spine-core), and a fabric comparison shows the tiers,
the bottleneck tier and its busiest links, so the 2:1 oversubscribed leaf uplinks can be seen at all."""

from __future__ import annotations

import io
import json
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from simulator.report.charts import links_chart
from simulator.report.links import bottleneck_tier, tier_usage
from simulator.report.schema import StepReport, TierUse
from simulator.report.table import print_report
from simulator.scenario import load_scenario
from simulator.simulate import SimulationResult, simulate
from simulator.topology.cluster import LINK_TIERS
from simulator.topology.loader import load_topology

ROOT = Path(__file__).resolve().parents[1]
OVERSUBSCRIBED = ROOT / "scenarios/compare/llama3-70b-1024-h100-fat-tree-2to1.yaml"


@cache
def oversubscribed() -> SimulationResult:
    return simulate(load_scenario(OVERSUBSCRIBED))


def test_tiers_follow_the_endpoints_of_each_link() -> None:
    three_tier = load_topology("dgx-h100", nodes=512)  # 512 hosts need the core tier
    counts = Counter(three_tier.link_tier)
    assert set(counts) == {"nvlink", "pcie", "nic-leaf", "leaf-spine", "spine-core"}
    # one NVLink, one PCIe and one NIC link per GPU, each in both directions
    assert counts["nvlink"] == counts["pcie"] == counts["nic-leaf"] == 2 * three_tier.num_gpus
    prefixes = {"leaf-spine": {"leaf", "spine"}, "spine-core": {"spine", "core"}}
    for i, tier in enumerate(three_tier.link_tier):
        if tier in prefixes:
            ends = {name.rstrip("0123456789") for name in three_tier.link_name(i).split(" -> ")}
            assert ends == prefixes[tier], three_tier.link_name(i)
    assert set(load_topology("torus-3d-example").link_tier) == {"ici"}
    # DGX-1: GPU-PCIe switch, PCIe switch-CPU and the CPU-CPU QPI link are all host PCIe
    assert set(load_topology("dgx1-v100", nodes=2).link_tier) == {"nvlink", "pcie", "nic-leaf"}  # one leaf
    assert set(LINK_TIERS) >= set(load_topology("explicit-example").link_tier)


def test_oversubscribed_fat_tree_reports_its_leaf_uplinks_as_a_tier() -> None:
    report = oversubscribed().report
    tiers = {t.tier: t for t in report.tiers}
    assert list(tiers) == ["nvlink", "pcie", "nic-leaf", "leaf-spine"]  # inner to outer
    up = tiers["leaf-spine"]
    assert up.used_links > 0 and up.bytes > 0
    assert up.busiest and all(" -> " in link.link and "spine" in link.link for link in up.busiest)
    assert up.max_utilization == up.busiest[0].utilization >= up.utilization > 0
    assert report.bottleneck_tier in tiers
    assert tiers[report.bottleneck_tier].max_utilization == max(t.max_utilization for t in report.tiers)


def test_tier_figures_add_up_to_the_links() -> None:
    cluster = load_topology("dgx-h100-fat-tree-2to1", nodes=128)
    rng = np.random.default_rng(0)
    link_bytes = rng.uniform(0, 1e9, size=cluster.link_src.size) * (rng.random(cluster.link_src.size) < 0.5)
    step = 2.0
    tiers = tier_usage(cluster, link_bytes, step)
    assert sum(t.links for t in tiers) == link_bytes.size
    assert sum(t.bytes for t in tiers) == pytest.approx(link_bytes.sum(), rel=1e-12)
    tier_of = np.asarray(cluster.link_tier)
    for t in tiers:
        ids = tier_of == t.tier
        cap = cluster.link_capacity_bytes_per_s[ids]
        assert t.utilization == pytest.approx(link_bytes[ids].sum() / (cap.sum() * step), rel=1e-12)
        assert t.max_utilization == pytest.approx((link_bytes[ids] / (cap * step)).max(), rel=1e-12)
        assert t.used_links == int((link_bytes[ids] > 0).sum())
        assert [u.utilization for u in t.busiest] == sorted((u.utilization for u in t.busiest), reverse=True)


def test_bottleneck_is_the_tier_whose_busiest_link_is_most_utilised() -> None:
    def tier(name: str, peak: float, moved: float = 1.0) -> TierUse:
        return TierUse(
            tier=name, links=2, used_links=1, bytes=moved, utilization=peak / 2, max_utilization=peak
        )

    assert bottleneck_tier([tier("nvlink", 0.2), tier("leaf-spine", 0.5)]) == "leaf-spine"
    assert bottleneck_tier([tier("nvlink", 0.5), tier("leaf-spine", 0.5)]) == "leaf-spine"  # tie: outer
    assert bottleneck_tier([tier("nvlink", 0.0, 0.0)]) == ""


def test_tiers_in_the_json_table_and_chart(tmp_path: Path) -> None:
    report = oversubscribed().report
    again = StepReport.model_validate(json.loads(report.model_dump_json()))
    assert again.tiers == report.tiers and again.bottleneck_tier == report.bottleneck_tier
    out = io.StringIO()
    print_report(report, Console(file=out, width=160, color_system=None))
    text = out.getvalue()
    assert "Link load per fabric tier" in text and "leaf - spine" in text and "bottleneck" in text
    assert up_link_name(report) in text
    chart = links_chart(report, tmp_path / "links.svg")
    svg = chart.read_text()
    assert "leaf - spine" in svg and "bottleneck tier" in svg


def up_link_name(report: StepReport) -> str:
    return next(t for t in report.tiers if t.tier == "leaf-spine").busiest[0].link
