"""Shared fixtures for the behavioural tests: small inline clusters and models, scenario documents, and a
writer of scenario files in a temporary folder.

The clusters are DGX-A100-like hosts written out here (not read from ``topologies/``), so that the tests
know every bandwidth they rely on: NVLink 300 GB/s per GPU per direction, one 25 GB/s HDR NIC per GPU on
one leaf switch, and PCIe faster than the NIC (64 GB/s) so that the NIC is the bottleneck between hosts.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.scenario import Scenario, scenario_from_dict

NVLINK_GBPS = 300.0  # GB/s per GPU per direction (A100 datasheet: 600 GB/s bidirectional)
NIC_GBPS = 25.0  # HDR 200 Gb/s
PCIE_GBPS = 64.0  # faster than the NIC on purpose

TINY_MODEL: dict[str, Any] = {"layers": 8, "hidden": 256, "heads": 8, "vocab": 1024}


def host_topology(gpus_per_host: int, nodes: int = 1) -> dict[str, Any]:
    """``nodes`` NVSwitch hosts of ``gpus_per_host`` A100s, one NIC per GPU, every NIC on one switch."""
    return {
        "name": f"test-{nodes}x{gpus_per_host}",
        "nodes": nodes,
        "host": {
            "builder": "nvswitch",
            "gpu": "a100-sxm-80gb",
            "gpus": gpus_per_host,
            "nvlink_gbps": NVLINK_GBPS,
            "nvlink_type": "nvlink3",
            "nics": gpus_per_host,
            "nic_gbps": NIC_GBPS,
            "nic_type": "ib-hdr",
            "pcie_gbps": PCIE_GBPS,
            "pcie_type": "pcie4",
        },
        "fabric": {"builder": "single_switch", "link_gbps": NIC_GBPS, "link_type": "ib-hdr"},
    }


def scenario_doc(
    *,
    gpus_per_host: int = 8,
    nodes: int = 1,
    model: dict[str, Any] | str | None = None,
    tp: int = 1,
    pp: int = 1,
    micro_batches: int = 1,
    micro_batch: int = 1,
    seq_len: int = 256,
    schedule: str = "1f1b",
    virtual_stages: int = 1,
    zero: int = 1,
    **extra: Any,
) -> dict[str, Any]:
    """A scenario mapping on ``host_topology``; dp is derived (gpus / (tp·pp)) and the global batch is
    chosen so that every pipeline runs ``micro_batches`` micro-batches."""
    world = gpus_per_host * nodes
    assert world % (tp * pp) == 0, "test layout must fill the cluster"
    dp = world // (tp * pp)
    doc: dict[str, Any] = {
        "model": copy.deepcopy(model if model is not None else TINY_MODEL),
        "cluster": {"topology": host_topology(gpus_per_host, nodes)},
        "training": {
            "seq_len": seq_len,
            "global_batch": micro_batches * micro_batch * dp,
            "micro_batch": micro_batch,
        },
        "parallelism": {
            "tp": tp,
            "pp": pp,
            "zero": zero,
            "schedule": schedule,
            "virtual_stages": virtual_stages,
        },
    }
    for key, value in extra.items():
        section, _, name = key.partition("__")
        doc.setdefault(section, {})[name] = value
    return doc


@pytest.fixture(scope="session")
def make_topology() -> Callable[..., dict[str, Any]]:
    """``make_topology(gpus_per_host, nodes=1)``: the topology mapping of ``host_topology``."""
    return host_topology


@pytest.fixture(scope="session")
def make_doc() -> Callable[..., dict[str, Any]]:
    """``make_doc(**kw)``: the scenario mapping of ``scenario_doc``."""
    return scenario_doc


@pytest.fixture(scope="session")
def make_scenario() -> Callable[..., Scenario]:
    """``make_scenario(**kw)``: the validated ``Scenario`` of ``scenario_doc(**kw)`` (keys such as
    ``training__optimizer="sgd"`` set ``training.optimizer``)."""

    def make(**kw: Any) -> Scenario:
        return scenario_from_dict(scenario_doc(**kw))

    return make


@pytest.fixture
def write_scenario(tmp_path: Path) -> Callable[..., Path]:
    """``write_scenario(doc_or_text, name="scenario")``: write a YAML scenario file (a mapping is dumped,
    a string is written as is) into a fresh folder and return its path."""

    def write(content: dict[str, Any] | list[Any] | str, name: str = "scenario") -> Path:
        path = tmp_path / f"{name}.yaml"
        text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
        path.write_text(text)
        return path

    return write
