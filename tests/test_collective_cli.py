"""``clustersim collective``: nccl-tests' size syntax and bandwidth definitions, the table and the JSON
object, the group options, and one-line errors with exit status 2 for bad input."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from simulator.cli import main
from simulator.commands.collective import parse_size, parse_sizes
from simulator.errors import ScenarioError
from simulator.network.bench import bus_factor, member_gpus
from simulator.topology.loader import load_topology
from simulator.workload.ops import CollectiveKind

H100 = ["--cluster", "topologies/dgx-h100.yaml"]


def run_json(capsys, *argv: str) -> dict[str, Any]:
    assert main(["collective", *argv, "--json"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    return json.loads(out.out)


def run_error(capsys, *argv: str) -> str:
    assert main(["collective", *argv]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("clustersim: error: ")
    return lines[0]


# ------------------------------------------------------------------------------ sizes
@pytest.mark.parametrize(
    "text,size",
    [("1K", 1024), ("1M", 2**20), ("8G", 8 * 2**30), ("4096", 4096), ("2m", 2 * 2**20), (" 3 G ", 3 * 2**30)],
)
def test_sizes_use_nccl_tests_powers_of_1024(text, size):
    assert parse_size(text) == size


def test_size_range_doubles_from_start_to_end():
    assert parse_sizes("1M:8G") == [2**k for k in range(20, 34)]
    assert len(parse_sizes("1K:8G")) == 24
    assert parse_sizes("1000:5000") == [1000, 2000, 4000]
    assert parse_sizes("64M") == [64 * 2**20]


@pytest.mark.parametrize("text", ["8G:1M", "1X", "M", "-1", "0", "1.5G", "1M:", "1M:2T", ""])
def test_bad_size_ranges_are_user_errors(text):
    with pytest.raises(ScenarioError, match="--sizes"):
        parse_sizes(text)


# ------------------------------------------------------------------------------ definitions
def test_bus_factors_are_nccl_tests_definitions():
    n = 16
    assert bus_factor(CollectiveKind.ALL_REDUCE, n) == 2 * (n - 1) / n
    for kind in (CollectiveKind.REDUCE_SCATTER, CollectiveKind.ALL_GATHER, CollectiveKind.ALL_TO_ALL):
        assert bus_factor(kind, n) == (n - 1) / n
    assert bus_factor(CollectiveKind.BROADCAST, n) == 1.0
    assert bus_factor(CollectiveKind.SEND_RECV, n) == 1.0


@pytest.mark.parametrize("op", [k.value for k in CollectiveKind])
def test_every_op_prints_rows_with_nccl_tests_bandwidths(capsys, op):
    doc = run_json(capsys, *H100, "--nodes", "2", "--op", op, "--sizes", "1M:64M")
    assert {"rows", "cluster", "gpus", "op", "algorithm", "network", "nodes"} <= set(doc)
    assert (doc["cluster"], doc["nodes"], doc["gpus"], doc["op"]) == ("dgx-h100", 2, 16, op)
    rows = doc["rows"]
    assert [r["size_bytes"] for r in rows] == [2**k for k in range(20, 27)]
    factor = bus_factor(CollectiveKind(op), 16)
    for r in rows:
        assert set(r) == {"size_bytes", "time_s", "algbw_GBps", "busbw_GBps", "algorithm"}
        assert r["algbw_GBps"] == pytest.approx(r["size_bytes"] / r["time_s"] / 1e9, rel=1e-12)
        assert r["busbw_GBps"] == pytest.approx(r["algbw_GBps"] * factor, rel=1e-12)
    times = [r["time_s"] for r in rows]
    assert all(b > a for a, b in zip(times, times[1:], strict=False))


def test_table_lists_every_size_with_the_algorithm(capsys):
    assert main(["collective", *H100, "--nodes", "2", "--sizes", "1M:8G", "--algorithm", "auto"]) == 0
    out = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in out if not line.startswith("#")]
    assert [int(r[0]) for r in rows] == parse_sizes("1M:8G")
    assert {r[4] for r in rows} <= {"ring", "tree"}  # two hosts: no NVLS across them
    assert out[-1].startswith("# Avg bus bandwidth")
    assert float(rows[-1][3]) == pytest.approx(8 * 50 * 0.94, rel=0.02)  # 8 NDR NICs per host at 47 GB/s


def test_flow_and_analytical_agree_for_one_collective(capsys):
    flow = run_json(capsys, *H100, "--sizes", "1K:1G", "--network", "flow")["rows"]
    analytical = run_json(capsys, *H100, "--sizes", "1K:1G", "--network", "analytical")["rows"]
    assert [r["time_s"] for r in flow] == pytest.approx([r["time_s"] for r in analytical], rel=1e-9)


def test_fixed_algorithm_is_used_at_every_size(capsys):
    rows = run_json(capsys, *H100, "--sizes", "1K:1G", "--algorithm", "ring")["rows"]
    assert {r["algorithm"] for r in rows} == {"ring"}
    # NVLS beats the ring on one H100 host at large sizes (nccl-tests issue 212: ~480 vs ~370 GB/s)
    nvls = run_json(capsys, *H100, "--sizes", "1G", "--algorithm", "nvls")["rows"][0]
    assert nvls["busbw_GBps"] > 1.2 * rows[-1]["busbw_GBps"]


def test_gpus_spread_evenly_over_hosts(capsys):
    cluster = load_topology("dgx-h100", nodes=2)
    assert member_gpus(cluster, 2).tolist() == [0, 8]
    assert member_gpus(cluster, 4).tolist() == [0, 1, 8, 9]
    assert member_gpus(cluster, None).tolist() == list(range(16))
    doc = run_json(capsys, *H100, "--nodes", "2", "--gpus", "2", "--op", "send_recv", "--sizes", "1G")
    assert doc["gpus"] == 2
    assert doc["rows"][0]["busbw_GBps"] == pytest.approx(47.0, rel=0.02)  # one NDR NIC each way


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    "argv,field",
    [
        (["--op", "all_reduce_scatter"], "--op"),
        (["--sizes", "8G:1M"], "--sizes"),
        (["--sizes", "1Q"], "--sizes"),
        (["--algorithm", "butterfly"], "--algorithm"),
        (["--algorithm", "ring", "--op", "all_to_all"], "--algorithm"),  # ring cannot run all-to-all
        (["--algorithm", "tree", "--op", "send_recv"], "--algorithm"),
        (["--algorithm", "nvls", "--nodes", "2"], "--algorithm"),  # NVLS needs one NVLink domain
        (["--gpus", "3", "--nodes", "2"], "--gpus"),
        (["--gpus", "1"], "--gpus"),
        (["--network", "packet"], "--network"),
        (["--nodes", "0"], "nodes"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, field):
    assert field in run_error(capsys, *H100, *argv)


def test_nvls_on_a100_is_refused_with_the_valid_algorithms(capsys):
    line = run_error(capsys, "--cluster", "dgx-a100", "--algorithm", "nvls")
    assert "valid: auto" in line and "ring" in line and "nvls," not in line


def test_unknown_cluster_is_a_user_error(capsys):
    assert "not found" in run_error(capsys, "--cluster", "no-such-topology.yaml")


def test_help_explains_the_command(capsys):
    with pytest.raises(SystemExit) as e:
        main(["collective", "--help"])
    assert e.value.code == 0
    assert "busbw" in capsys.readouterr().out


def test_default_group_is_every_gpu():
    cluster = load_topology("dgx-a100", nodes=2)
    assert np.array_equal(member_gpus(cluster, None), np.arange(16))
