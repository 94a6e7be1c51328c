"""Report outputs: terminal table, charts, Perfetto trace, timeline, CSV, comparison charts, HTML.

Built against synthetic ``StepReport`` and ``Trace`` objects (the factory below), so these tests do not
depend on the engine.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rich.console import Console

from simulator.engine.trace import Trace, TraceRecorder
from simulator.report.charts import (
    hidden_segments,
    links_chart,
    memory_chart,
    step_breakdown_chart,
    step_segments,
)
from simulator.report.compare import (
    breakdown_comparison,
    heatmap,
    heatmap_grid,
    lower_is_better,
    memory_comparison,
    scaling_curves,
    scenario_labels,
    throughput_mfu_bars,
)
from simulator.report.html import write_html_report
from simulator.report.perfetto import write_chrome_trace
from simulator.report.schema import Breakdown, CommTimes, Layout, LinkUse, MemoryGiB, StepReport, TierUse
from simulator.report.style import atomic_path, link_type_colors, stream_sort_key
from simulator.report.table import print_report
from simulator.report.tabular import BASE_COLUMNS, csv_cell, reports_to_rows, write_csv
from simulator.report.timeline import pick_ranks, row_bars, timeline_chart, timeline_rows

# ---- factory ----------------------------------------------------------------------------------------


def make_report(**overrides: Any) -> StepReport:
    """A plausible GPT-3-like step report; keyword arguments replace top-level fields."""
    fields: dict[str, Any] = {
        "scenario": "gpt3-175b-on-1024-a100",
        "gpus": 1024,
        "step_time_s": 12.5,
        "tokens_per_s": 251_658.24,
        "samples_per_s": 122.88,
        "model_tflops_per_gpu": 141.2,
        "mfu": 0.4523,
        "hfu": 0.6031,
        "breakdown": Breakdown(
            compute_s=9.0, exposed_comm_s=1.5, overlapped_comm_s=2.25, bubble_s=1.75, other_s=0.25
        ),
        "comm": CommTimes(tp_s=2.0, dp_s=1.25, pp_s=0.5),
        "exposed_comm": CommTimes(tp_s=0.5, dp_s=0.75, pp_s=0.25),
        "memory_gib_per_gpu": MemoryGiB(
            weights=5.5, grads=5.5, optimizer=4.1, activations=38.25, other=3.0, total=56.35
        ),
        "fits_memory": True,
        "simulated_ranks": 8,
        "events": 123_456,
        "wall_s": 0.84,
        "model": "gpt3-175b",
        "gpu": "a100-sxm-80gb",
        "cluster": "dgx-a100-superpod",
        "layout": Layout(
            tp=8,
            pp=8,
            dp=16,
            cp=1,
            ep=1,
            etp=8,
            zero=1,
            sequence_parallel=True,
            schedule="1f1b",
            virtual_stages=1,
            micro_batch=1,
            micro_batches=96,
            global_batch=1536,
            seq_len=2048,
            precision="bf16",
            recompute="selective",
        ),
        "links": [
            LinkUse(link="node3/nic0->leaf1", link_type="ib", bytes=7.5e10, utilization=0.8125),
            LinkUse(link="gpu8->nvswitch0", link_type="nvlink", bytes=2.5e11, utilization=0.625),
            LinkUse(link="leaf1->spine[0]", link_type="ib", bytes=3.0e10, utilization=0.3333),
        ],
        "warnings": ["global batch 1536 is not a multiple of dp*micro_batch [check]"],
        "version": "0.1.0",
    }
    fields.update(overrides)
    return StepReport(**fields)


def make_trace(stages: int = 4, micro_batches: int = 4, fwd_s: float = 1e-3) -> Trace:
    """A GPipe-like pipeline step: forward/backward per micro-batch, pp sends, tp comm, dp all-reduce."""
    rec = TraceRecorder()
    bwd_s, send_s = 2 * fwd_s, 0.1 * fwd_s
    for stage in range(stages):
        rank = stage * 8
        t = stage * (fwd_s + send_s)
        for mb in range(micro_batches):
            rec.add(rank, "compute", f"fwd mb{mb}", "forward", "", t, t + fwd_s, 1e6, 3e12, 3e12, mb)
            rec.add(
                rank,
                "tp-comm",
                f"tp ar mb{mb}",
                "comm",
                "tp",
                t + 0.5 * fwd_s,
                t + 0.7 * fwd_s,
                2e6,
                0,
                0,
                mb,
            )
            if stage < stages - 1:
                rec.add(
                    rank,
                    "pp-send",
                    f"send act mb{mb}",
                    "comm",
                    "pp",
                    t + fwd_s,
                    t + fwd_s + send_s,
                    4e6,
                    0,
                    0,
                    mb,
                )
            t += fwd_s
        t = (stages + micro_batches - 1) * (fwd_s + send_s) + (stages - 1 - stage) * (bwd_s + send_s)
        for mb in range(micro_batches):
            rec.add(rank, "compute", f"recompute mb{mb}", "recompute", "", t, t + 0.3 * fwd_s, 0, 0, 1e12, mb)
            t += 0.3 * fwd_s
            rec.add(rank, "compute", f"bwd mb{mb}", "backward", "", t, t + bwd_s, 2e6, 6e12, 6e12, mb)
            if stage > 0:
                rec.add(rank, "pp-recv", f"recv grad mb{mb}", "comm", "pp", t - send_s, t, 4e6, 0, 0, mb)
            t += bwd_s
        rec.add(rank, "dp-comm", "dp all-reduce", "comm", "dp", t, t + 4 * fwd_s, 1e9, 0, 0, -1)
        rec.add(rank, "compute", "optimizer", "optimizer", "", t + 4 * fwd_s, t + 4.5 * fwd_s, 1e9, 0, 0, -1)
        # a stream name the reports do not know
        rec.add(rank, "ep-weird", "mystery", "comm", "ep", t, t + fwd_s, 0, 0, 0, -1)
    labels = {s * 8: f"pp{s} (x128)" for s in range(stages)}
    return rec.freeze(labels, {s * 8: 128 for s in range(stages)})


def test_factory_is_consistent() -> None:
    report = make_report()
    b = report.breakdown
    assert b.compute_s + b.exposed_comm_s + b.bubble_s + b.other_s == report.step_time_s
    trace = make_trace()
    assert len(trace) > 0 and np.all(trace.end_s >= trace.start_s)


# ---- helpers ----------------------------------------------------------------------------------------

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_chart(path: Path) -> None:
    """The chart exists, is not empty, and its bytes are of the format its suffix names."""
    data = path.read_bytes()
    assert len(data) > 2000, f"{path} is suspiciously small"
    if path.suffix == ".png":
        assert data.startswith(PNG_MAGIC)
    else:
        assert path.suffix == ".svg" and b"<svg" in data[:2000]
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")], "temporary file left behind"


def render_table(report: StepReport, **kwargs: Any) -> str:
    """What print_report shows on a 100-column terminal without colour."""
    console = Console(no_color=True, width=100, record=True, file=io.StringIO())
    print_report(report, console, **kwargs)
    return console.export_text()


# ---- table.py ---------------------------------------------------------------------------------------


def test_table_shows_every_number() -> None:
    text = render_table(make_report())
    expected = [
        "gpt3-175b-on-1024-a100",
        "gpt3-175b",
        "1,024 × NVIDIA A100 SXM4 80GB",
        "dgx-a100-superpod",
        "tp 8",
        "pp 8",
        "dp 16",
        "cp 1",
        "ep 1",
        "zero 1",
        "1f1b",
        "96 micro-batches",
        "12.500 s",
        "251,658",
        "122.88",
        "141.2",
        "45.2%",
        "60.3%",
        # breakdown: seconds and % of step
        "9.000 s",
        "72.0%",
        "1.500 s",
        "12.0%",
        "1.750 s",
        "14.0%",
        "0.250 s",
        "2.0%",
        "2.250 s",
        "18.0%",
        # communication per kind: total / exposed / hidden
        "TP (tensor)",
        "2.000 s",
        "0.500 s",
        "DP (data)",
        "1.250 s",
        "0.750 s",
        "PP (pipeline)",
        # memory
        "38.25",
        "56.35",
        "80.00",  # A100 80GB: 81,920 MiB of HBM
        "fits",
        # warnings (brackets must survive: no markup), links, cost
        "not a multiple of dp*micro_batch [check]",
        "node3/nic0->leaf1",
        "81.2%",
        "250.00",
        "leaf1->spine[0]",
        "123,456 events",
    ]
    missing = [s for s in expected if s not in text]
    assert not missing, f"missing {missing} in:\n{text}"
    assert "NOT FITS" not in text and "EP (expert)" not in text  # no ep communication in this report


def test_table_not_fits_without_colour_and_without_optional_parts() -> None:
    report = make_report(fits_memory=False, links=[], warnings=[], layout=None, gpu="mystery-gpu")
    text = render_table(report, capacity_gib=40.0)
    assert "NOT FITS" in text and "16.35 GiB over" in text
    assert "mystery-gpu" in text and "Busiest links" not in text and "Warnings" not in text
    assert all(len(line) <= 100 for line in text.splitlines())


def test_table_flags_breakdown_that_does_not_sum() -> None:
    bad = Breakdown(compute_s=5.0, exposed_comm_s=1.0, overlapped_comm_s=0.0, bubble_s=0.0, other_s=0.0)
    assert "parts sum to 6.000 s" in render_table(make_report(breakdown=bad))


def test_table_uses_colour_when_allowed() -> None:
    console = Console(
        force_terminal=True, color_system="standard", width=100, record=True, file=io.StringIO()
    )
    print_report(make_report(fits_memory=False), console)
    assert "\x1b[" in console.export_text(styles=True)


# ---- charts.py --------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_step_charts_written_in_format_of_suffix(tmp_path: Path, suffix: str) -> None:
    report = make_report()
    assert_chart(step_breakdown_chart(report, tmp_path / f"breakdown{suffix}"))
    assert_chart(memory_chart(report, tmp_path / f"memory{suffix}", 74.5))
    assert_chart(links_chart(report, tmp_path / f"links{suffix}"))


def test_breakdown_split_by_kind_only_when_consistent() -> None:
    split = step_segments(make_report())
    assert [s.key for s in split] == ["compute", "comm:tp", "comm:dp", "comm:pp", "bubble", "other"]
    assert sum(s.seconds for s in split) == pytest.approx(12.5)
    whole = step_segments(make_report(exposed_comm=CommTimes()))
    assert [s.key for s in whole] == ["compute", "exposed_comm", "bubble", "other"]
    hidden = hidden_segments(make_report())
    assert all(s.hatched for s in hidden) and sum(s.seconds for s in hidden) == pytest.approx(2.25)


def test_charts_without_optional_data(tmp_path: Path) -> None:
    report = make_report(links=[], gpu="", exposed_comm=CommTimes(), comm=CommTimes())
    assert_chart(links_chart(report, tmp_path / "links.png"))
    assert_chart(memory_chart(report, tmp_path / "memory.png", None))
    assert_chart(step_breakdown_chart(report, tmp_path / "breakdown.svg"))


def test_chart_rejects_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        step_breakdown_chart(make_report(), tmp_path / "chart.jpg")
    assert list(tmp_path.iterdir()) == []


def test_svg_output_is_deterministic(tmp_path: Path) -> None:
    a = step_breakdown_chart(make_report(), tmp_path / "a.svg").read_bytes()
    b = step_breakdown_chart(make_report(), tmp_path / "b.svg").read_bytes()
    assert a == b


# ---- perfetto.py ------------------------------------------------------------------------------------


def load_events(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The document, its metadata events and its slices."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    events = doc["traceEvents"]
    return doc, [e for e in events if e["ph"] == "M"], [e for e in events if e["ph"] == "X"]


def test_chrome_trace_structure(tmp_path: Path) -> None:
    trace = make_trace()
    path = tmp_path / "trace.json"
    count = write_chrome_trace(trace, path)
    doc, meta, slices = load_events(path)
    assert count == len(slices) == len(trace)
    assert doc["displayTimeUnit"] == "ms"
    assert {e["ph"] for e in doc["traceEvents"]} == {"M", "X"}
    # one process per simulated rank, named from rank_labels and multiplicity
    names = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert sorted(names) == [r + 1 for r in trace.ranks]
    assert names[9] == "rank 8 · pp1 (x128)"
    # one thread per stream used by that rank, compute first; tids unique across processes
    threads = [(e["pid"], e["tid"], e["args"]["name"]) for e in meta if e["name"] == "thread_name"]
    assert len({tid for _, tid, _ in threads}) == len(threads)
    rank0 = sorted((tid, name) for pid, tid, name in threads if pid == 1)
    assert [name for _, name in rank0] == ["compute", "tp-comm", "ep-weird", "pp-send", "dp-comm"]
    assert {(e["pid"], e["tid"]) for e in slices} <= {(pid, tid) for pid, tid, _ in threads}
    assert all(e["pid"] != 0 and e["tid"] != 0 for e in slices)


def test_chrome_trace_units_categories_and_args(tmp_path: Path) -> None:
    trace = make_trace(fwd_s=2.5e-3)
    path = tmp_path / "trace.json"
    write_chrome_trace(trace, path)
    _, _, slices = load_events(path)
    fwd = next(e for e in slices if e["name"] == "fwd mb1" and e["pid"] == 1)
    assert fwd["ts"] == pytest.approx(2500.0) and fwd["dur"] == pytest.approx(2500.0)  # µs
    assert fwd["cat"] == "forward"
    assert fwd["args"] == {"bytes": 1e6, "model_flops": 3e12, "hw_flops": 3e12, "micro_batch": 1}
    dp = next(e for e in slices if e["name"] == "dp all-reduce" and e["pid"] == 1)
    assert dp["cat"] == "dp" and dp["args"]["micro_batch"] is None and dp["dur"] == pytest.approx(10_000.0)
    assert {e["cat"] for e in slices} == {
        "forward",
        "backward",
        "recompute",
        "optimizer",
        "tp",
        "pp",
        "dp",
        "ep",
    }


def test_chrome_trace_slices_nest_per_track_and_output_is_deterministic(tmp_path: Path) -> None:
    trace = make_trace()
    write_chrome_trace(trace, tmp_path / "a.json")
    write_chrome_trace(trace, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    _, _, slices = load_events(tmp_path / "a.json")
    by_track: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for e in slices:
        by_track.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by_track.values():
        spans.sort()
        assert all(nxt[0] >= prev[1] for prev, nxt in zip(spans, spans[1:], strict=False))


def test_chrome_trace_rejects_overlapping_ops_and_leaves_no_file(tmp_path: Path) -> None:
    rec = TraceRecorder()
    rec.add(0, "compute", "a", "forward", "", 0.0, 2e-3)
    rec.add(0, "compute", "b", "forward", "", 1e-3, 3e-3)
    trace = rec.freeze({0: "pp0"}, {0: 1})
    with pytest.raises(AssertionError, match="overlap"):
        write_chrome_trace(trace, tmp_path / "bad.json")
    assert list(tmp_path.iterdir()) == []


def test_chrome_trace_links_sends_receives_and_collective_members(tmp_path: Path) -> None:
    """Flow events: a send to the receive that ends with it (sorted senders to sorted receivers when
    replicas transfer at once), and the members of one collective on different ranks, in rank order.
    (tests/test_perfetto_ui.py checks Perfetto binds them.)"""
    rec = TraceRecorder()
    for src, dst in ((0, 2), (1, 3)):  # two replicas send at once (peer = rank + 2)
        rec.add(src, "pp-send-fwd", "send_act", "comm", "pp", 1e-3, 2e-3, 4e6, 0, 0, 0)
        rec.add(dst, "pp-recv-fwd", "recv_act", "comm", "pp", 0.5e-3, 2e-3, 4e6, 0, 0, 0)
    for rank in (0, 2, 3):
        rec.add(rank, "dp-comm", "grad_allreduce", "comm", "dp", 3e-3 + rank * 1e-4, 5e-3, 1e8, 0, 0, -1)
    rec.add(1, "dp-comm", "grad_allreduce", "comm", "dp", 3e-3, 6e-3, 1e8, 0, 0, -1)  # another instant
    trace = rec.freeze({r: f"r{r}" for r in range(4)}, {r: 1 for r in range(4)})
    write_chrome_trace(trace, tmp_path / "t.json")
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    flows: dict[int, dict[str, dict[str, Any]]] = {}
    for e in events:
        if e["ph"] in ("s", "f"):
            flows.setdefault(e["id"], {})[e["ph"]] = e
    pairs = sorted((f["s"]["cat"], f["s"]["pid"] - 1, f["f"]["pid"] - 1) for f in flows.values())
    assert pairs == [("flow.dp", 0, 2), ("flow.dp", 2, 3), ("flow.pp", 0, 2), ("flow.pp", 1, 3)]
    assert all(f["f"]["bp"] == "e" for f in flows.values())
    # each end sits inside its slice (the midpoint), on the slice's own track
    slices = {(e["pid"], e["tid"], e["ts"], e["ts"] + e["dur"]) for e in events if e["ph"] == "X"}
    for f in flows.values():
        for end in f.values():
            assert any(p == end["pid"] and t == end["tid"] and a < end["ts"] < b for p, t, a, b in slices)


def test_chrome_trace_counters_per_tier(tmp_path: Path) -> None:
    tiers = [
        TierUse(tier="nvlink", links=16, used_links=16, bytes=1e12, utilization=0.4, max_utilization=0.5),
        TierUse(tier="leaf-spine", links=8, used_links=4, bytes=1e11, utilization=0.1, max_utilization=0.3),
    ]
    write_chrome_trace(make_trace(), tmp_path / "t.json", tiers=tiers, step_s=0.02)
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    counters = [e for e in events if e["ph"] == "C"]
    by_name: dict[str, list[tuple[float, float]]] = {}
    for e in counters:
        by_name.setdefault(e["name"], []).append((e["ts"], e["args"]["value"]))
    assert by_name == {
        "link utilisation % · NVLink (scale-up)": [(0.0, 40.0), (20_000.0, 0.0)],
        "link utilisation % · leaf - spine": [(0.0, 10.0), (20_000.0, 0.0)],
    }
    fabric = {e["pid"] for e in counters}
    assert len(fabric) == 1 and fabric.isdisjoint({e["pid"] for e in events if e["ph"] == "X"})


def test_stream_order_and_link_colours_handle_unknown_names() -> None:
    streams = ["zz-custom", "pp-recv-bwd", "dp-comm", "pp-send-chunk1", "compute", "tp-comm", "pp-send-fwd"]
    assert sorted(streams, key=stream_sort_key) == [
        "compute",
        "tp-comm",
        "pp-send-fwd",
        "pp-recv-bwd",
        "pp-send-chunk1",
        "dp-comm",
        "zz-custom",
    ]
    colors = link_type_colors(["nvlink3", "ib-hdr", "weird", "nvlink4"])
    assert colors["nvlink3"] == colors["nvlink4"] != colors["ib-hdr"] and set(colors) == {
        "nvlink3",
        "ib-hdr",
        "weird",
        "nvlink4",
    }


# ---- timeline.py ------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_timeline_chart_written(tmp_path: Path, suffix: str) -> None:
    assert_chart(timeline_chart(make_trace(), tmp_path / f"timeline{suffix}"))


def test_timeline_rows_and_rank_selection() -> None:
    trace = make_trace(stages=8)
    assert pick_ranks(trace.ranks, 16) == trace.ranks
    picked = pick_ranks(trace.ranks, 3)
    assert picked[0] == 0 and picked[-1] == 56 and len(picked) == 3
    rows = timeline_rows(trace, [0, 56])
    assert rows[0] == (0, "compute") and rows[-1] == (56, "dp-comm")
    assert [s for r, s in rows if r == 56] == ["compute", "tp-comm", "ep-weird", "pp-recv", "dp-comm"]


def test_timeline_merges_consecutive_ops_of_one_micro_batch() -> None:
    rec = TraceRecorder()
    for layer in range(4):  # four layers of micro-batch 0, back to back, then micro-batch 1
        rec.add(0, "compute", f"fwd L{layer}", "forward", "", layer * 1e-3, (layer + 1) * 1e-3, micro_batch=0)
    rec.add(0, "compute", "fwd L0", "forward", "", 4e-3, 5e-3, micro_batch=1)
    trace = rec.freeze({0: "pp0"}, {0: 1})
    bars = row_bars(trace, trace.select(0), 1e-9)
    assert [(b.micro_batch, b.start_s, b.end_s) for b in bars] == [(0, 0.0, 4e-3), (1, 4e-3, 5e-3)]


def test_timeline_of_many_ranks_is_capped(tmp_path: Path) -> None:
    trace = make_trace(stages=32, micro_batches=2)
    assert_chart(timeline_chart(trace, tmp_path / "big.png", max_ranks=4))


# ---- tabular.py -------------------------------------------------------------------------------------


def test_rows_have_stable_columns_and_swept_values() -> None:
    reports = [make_report(scenario="a"), make_report(scenario="b", fits_memory=False)]
    rows = reports_to_rows(reports, [{"parallelism.tp": 4}, {"parallelism.tp": 8, "training.micro_batch": 2}])
    assert (
        list(rows[0])
        == list(rows[1])
        == ["scenario", "parallelism.tp", "training.micro_batch", *BASE_COLUMNS]
    )
    assert rows[0]["training.micro_batch"] == "" and rows[1]["parallelism.tp"] == 8
    assert rows[0]["layout"] == "tp8 pp8 dp16 z1 1f1b" and rows[0]["mfu"] == 0.4523
    assert (
        rows[0]["comm.tp_s"] == 2.0
        and rows[0]["exposed_comm.dp_s"] == 0.75
        and rows[1]["fits_memory"] is False
    )
    assert rows[0]["breakdown.compute_s"] == 9.0 and rows[0]["memory_gib_per_gpu.total"] == 56.35
    assert list(reports_to_rows(reports)[0])[:2] == ["scenario", "gpus"]
    with pytest.raises(ValueError, match="clash"):
        reports_to_rows(reports[:1], [{"mfu": 1}])


def test_csv_round_trips_with_header(tmp_path: Path) -> None:
    rows = reports_to_rows([make_report(), make_report(scenario='x, "quoted"\nline')], [{"sweep.n": 1}, {}])
    path = write_csv(rows, tmp_path / "out" / "results.csv")
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        back = list(reader)
        assert reader.fieldnames == list(rows[0])
    assert [r["scenario"] for r in back] == ["gpt3-175b-on-1024-a100", 'x, "quoted"\nline']
    for original, read in zip(rows, back, strict=True):
        assert read == {k: str(csv_cell(v)) for k, v in original.items()}
    assert back[0]["fits_memory"] == "true"  # as results.csv writes booleans (JSON), not Python's True
    assert float(back[0]["tokens_per_s"]) == 251_658.24  # floats survive exactly


def test_comparison_csv_and_batch_results_csv_agree(tmp_path: Path) -> None:
    """The fields both tables hold have the same names and the same cells (issue #10, point 8)."""
    from simulator.batch.runner import METRIC_COLUMNS, _cell

    report = make_report(fits_memory=False)
    rows = reports_to_rows([report])
    doc = json.loads(report.model_dump_json())
    shared = [name for name, _ in METRIC_COLUMNS if name in rows[0]]
    assert len(shared) == len(METRIC_COLUMNS)  # every results.csv metric is a comparison.csv column
    for name, path in METRIC_COLUMNS:
        value: Any = doc
        for part in path:
            value = value[part]
        assert str(csv_cell(rows[0][name])) == _cell(value), name


def test_csv_write_is_atomic(tmp_path: Path) -> None:
    path = tmp_path / "results.csv"
    path.write_text("old contents\n")
    rows: list[dict[str, object]] = [{"a": 1}, {"a": Unwritable()}]
    with pytest.raises(RuntimeError, match="boom"):
        write_csv(rows, path)
    assert path.read_text() == "old contents\n"
    assert [p.name for p in tmp_path.iterdir()] == ["results.csv"]


class Unwritable:
    """A cell value whose text cannot be produced: makes a writer fail half-way."""

    def __str__(self) -> str:
        raise RuntimeError("boom")


def test_atomic_path_leaves_nothing_when_the_writer_raises(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "file.txt"
    with pytest.raises(KeyError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise KeyError("crash")
    assert not target.exists() and list((tmp_path / "sub").iterdir()) == []


# ---- compare.py -------------------------------------------------------------------------------------


def sweep_reports() -> tuple[list[StepReport], list[dict[str, object]]]:
    """A small tp × GPU-count sweep over two models; tp=2 does not fit memory."""
    reports: list[StepReport] = []
    extras: list[dict[str, object]] = []
    for gpus in (256, 512, 1024):
        for tp in (2, 4, 8):
            step = 10.0 * 256 / gpus * (1 + 0.02 * tp) * (1 + 0.05 * gpus / 256)
            reports.append(
                make_report(
                    scenario=f"gpt3-tp{tp}-{gpus}",
                    gpus=gpus,
                    step_time_s=step,
                    tokens_per_s=3.1e6 / step,
                    mfu=0.5 - 0.01 * tp,
                    fits_memory=tp >= 4,
                )
            )
            extras.append({"parallelism.tp": tp})
        reports.append(make_report(scenario=f"llama-{gpus}", model="llama3-70b", gpu="h100-sxm", gpus=gpus))
        extras.append({})
    return reports, extras


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_comparison_charts_written(tmp_path: Path, suffix: str) -> None:
    reports, extras = sweep_reports()
    rows = reports_to_rows(reports, extras)
    gpt = [r for r in rows if r["model"] == "gpt3-175b"]
    assert_chart(breakdown_comparison(reports[:5], tmp_path / f"breakdown{suffix}"))
    assert_chart(throughput_mfu_bars(reports[:5], tmp_path / f"throughput{suffix}"))
    assert_chart(scaling_curves(reports, tmp_path / f"scaling{suffix}"))
    assert_chart(memory_comparison(reports[:5], tmp_path / f"memory{suffix}"))
    assert_chart(heatmap(gpt, "gpus", "parallelism.tp", "tokens_per_s", tmp_path / f"heat{suffix}"))


def test_heatmap_grid_keeps_the_best_row_per_cell() -> None:
    rows: list[dict[str, object]] = [
        {"x": 1, "y": "a", "step_time_s": 3.0, "mfu": 0.3, "fits_memory": True},
        {"x": 1, "y": "a", "step_time_s": 2.0, "mfu": 0.2, "fits_memory": "False"},  # as read back from CSV
        {"x": "2", "y": "b", "step_time_s": 5.0, "mfu": 0.5, "fits_memory": True},
    ]
    xs, ys, values, fits = heatmap_grid(rows, "x", "y", "step_time_s")
    assert xs == [1, "2"] and ys == ["a", "b"]
    assert values[0, 0] == 2.0 and not fits[0, 0] and np.isnan(values[0, 1])
    _, _, mfu, mfu_fits = heatmap_grid(rows, "x", "y", "mfu")
    assert mfu[0, 0] == 0.3 and mfu_fits[0, 0]
    with pytest.raises(ValueError, match="no column 'nope'"):
        heatmap_grid(rows, "x", "nope", "mfu")
    with pytest.raises(ValueError, match="no rows"):
        heatmap_grid([], "x", "y", "mfu")


def test_heatmap_leaves_out_rows_without_an_axis_value(tmp_path: Path) -> None:
    """``compare --x tp --y pp``: an infeasible batch point carries only its swept column
    (parallelism.tp), so it has no tp; it must not become a "None" row or column."""
    rows: list[dict[str, object]] = [
        {"tp": 4, "pp": 2, "mfu": 0.4, "fits_memory": True},
        {"tp": 8, "pp": 4, "mfu": 0.3, "fits_memory": True},
        {"scenario": "tp-pp_tp=1_pp=2", "parallelism.tp": 1, "status": "infeasible", "reason": "x"},
        {"tp": "", "pp": 4, "mfu": 0.1},
    ]
    xs, ys, values, _ = heatmap_grid(rows, "tp", "pp", "mfu")
    assert xs == [4, 8] and ys == [2, 4] and values.shape == (2, 2)
    svg = heatmap(rows, "tp", "pp", "mfu", tmp_path / "heat.svg").read_text()
    assert ">None<" not in svg and "None" not in svg
    with pytest.raises(ValueError, match="no row has both"):
        heatmap_grid(
            [rows[0], {"tp": None, "pp": 2, "mfu": 0.1}][1:] + [{"tp": 1, "pp": "", "mfu": 0.2}],
            "tp",
            "pp",
            "mfu",
        )


def test_memory_comparison_names_the_total_used_and_the_capacity(tmp_path: Path) -> None:
    """The total is written at the bar's end as "used"; the capacity is named in the legend (it used to be
    written beside the capacity tick, where a fitting bar's total read as the HBM size)."""
    reports = [make_report(scenario="a"), make_report(scenario="b", gpu="h200-sxm")]
    svg = memory_comparison(reports, tmp_path / "memory.svg").read_text()  # text stays text in SVG
    assert "used 56.4 GiB" in svg and "HBM capacity 80 GiB" in svg and "HBM capacity 140 GiB" in svg


def test_scaling_lines_stay_distinguishable_when_they_coincide(tmp_path: Path) -> None:
    """Two fabrics with identical throughput: different markers and line styles, points nudged apart."""
    from matplotlib.figure import Figure

    reports = [
        make_report(scenario=f"{c}-{g}", cluster=c, gpus=g, tokens_per_s=1000.0 * g)
        for c in ("fabric-a", "fabric-b")
        for g in (256, 512)
    ]
    drawn: list[Any] = []
    original = Figure.savefig

    def capture(fig: Any, *args: Any, **kwargs: Any) -> None:
        drawn.append(fig)
        original(fig, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Figure, "savefig", capture)
        scaling_curves(reports, tmp_path / "scaling.svg", lambda r: r.cluster)
    lines = [ln for ln in drawn[0].axes[0].get_lines() if ln.get_label() in ("fabric-a", "fabric-b")]
    assert len(lines) == 2
    a, b = lines
    assert a.get_marker() != b.get_marker() and a.get_linestyle() != b.get_linestyle()
    assert list(a.get_xdata()) != list(b.get_xdata())  # nudged apart on the GPU axis
    assert list(a.get_ydata()) == list(b.get_ydata())  # the values themselves untouched


def test_timeline_paints_the_dominant_colour_first_and_never_widens_over_a_neighbour() -> None:
    """Interleaved sub-pixel backward and recompute ops (the gpt3 Gantt): the colour covering most of the
    row is painted first, the scarcer over it, and neither is widened (a widened sliver would cover its
    neighbour); an isolated sub-pixel op is widened to a pixel so that it shows."""
    from simulator.report.timeline import Bar, draw_row

    span = 1000.0
    pixel = 5e-4 * span
    bars, t = [], 0.0
    for mb in range(50):
        bars.append(Bar(t, t + 0.2 * pixel, "recompute", "#F2C14E", mb))
        bars.append(Bar(t + 0.2 * pixel, t + 0.6 * pixel, "backward", "#2F5D9E", mb))
        t += 0.6 * pixel
    bars.append(Bar(500.0, 500.0 + 0.1 * pixel, "comm:pp", "#8E5EA2", 0))  # alone: idle on both sides

    calls: list[tuple[str, list[tuple[float, float]], float]] = []

    class Axes:
        def broken_barh(self, ranges: Any, _y: Any, facecolors: str, zorder: float, **_kw: Any) -> None:
            calls.append((facecolors, list(ranges), zorder))

        def text(self, *args: Any, **kwargs: Any) -> None:
            pass

    draw_row(Axes(), 0.0, bars, 0.0, 1.0, span)  # type: ignore[arg-type]
    order = [color for color, _, _ in sorted(calls, key=lambda c: c[2])]
    assert order.index("#2F5D9E") < order.index("#F2C14E")  # backward under recompute
    widths = {color: sum(w for _, w in ranges) for color, ranges, _ in calls}
    assert widths["#2F5D9E"] == pytest.approx(50 * 0.4 * pixel)  # drawn as long as it ran
    assert widths["#F2C14E"] == pytest.approx(50 * 0.2 * pixel)
    assert widths["#8E5EA2"] == pytest.approx(pixel)  # isolated: one pixel wide, centred on the op


def test_scenario_labels_are_unique_and_metric_kinds() -> None:
    labels = scenario_labels([make_report(), make_report(), make_report(scenario="b")])
    assert labels == ["gpt3-175b-on-1024-a100", "gpt3-175b-on-1024-a100 #2", "b"]
    assert lower_is_better("step_time_s") and lower_is_better("memory_gib_per_gpu.total")
    assert not lower_is_better("tokens_per_s") and not lower_is_better("mfu")


# ---- html.py ----------------------------------------------------------------------------------------


class _Tags(HTMLParser):
    """Collects tags, their attributes and the text of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_html_report_is_self_contained_with_table_and_charts(tmp_path: Path) -> None:
    reports, extras = sweep_reports()
    reports[0] = reports[0].model_copy(update={"scenario": "<script>alert(1)</script>"})
    rows = reports_to_rows(reports, extras)
    png = throughput_mfu_bars(reports, tmp_path / "throughput.png")
    svg = breakdown_comparison(reports[:4], tmp_path / "breakdown.svg")
    path = write_html_report(reports, rows, {"Throughput": png, "Breakdown": svg}, tmp_path / "report.html")
    page = path.read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    # the results table: one header cell per column, one row per report, sortable by script; these reports
    # carry no cost (no cost.usd_per_gpu_hour in them), so the $ and days columns are left out, not shown empty
    unknown = {"usd_per_million_tokens", "usd", "days"}
    assert all(rows[0][c] is None for c in unknown & set(rows[0]))
    assert tags.count("th") == len(set(rows[0]) - unknown) and tags.count("tr") == len(rows) + 1
    assert 'class="sortable"' in page and "addEventListener" in page
    # the charts, embedded
    images = [a["src"] or "" for t, a in parser.tags if t == "img"]
    assert len(images) == 2
    assert images[0].startswith("data:image/png;base64,") and images[1].startswith(
        "data:image/svg+xml;base64,"
    )
    assert base64.b64decode(images[0].split(",", 1)[1]) == png.read_bytes()
    # nothing external, and user text escaped
    assert "http://" not in page and "https://" not in page
    assert not [
        a for _, a in parser.tags for k in ("src", "href") if (a.get(k) or "data:").split(":")[0] != "data"
    ]
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert "NOT FITS" in page and "Fastest that fits memory" in page


def test_html_report_rejects_other_chart_formats_and_leaves_no_file(tmp_path: Path) -> None:
    chart = tmp_path / "chart.jpg"
    chart.write_bytes(b"\xff\xd8")
    with pytest.raises(ValueError, match=r"\.svg or \.png"):
        write_html_report(
            [make_report()], reports_to_rows([make_report()]), [chart], tmp_path / "report.html"
        )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chart.jpg"]
