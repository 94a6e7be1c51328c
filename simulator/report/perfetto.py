"""Export a simulated step as a Chrome trace JSON that opens in Perfetto (ui.perfetto.dev) or chrome://tracing.

Layout of the file (REFERENCE.md, "Formats"): one process per simulated rank, named by a ``process_name``
metadata event (``"rank 8 · pp1 (×128)"``: the rank, its class label, how many real ranks it stands for);
one thread per stream of that rank (``compute`` first), named by ``thread_name``; one complete event
(``ph: "X"``) per executed op, ``ts`` and ``dur`` in microseconds rounded to the nanosecond.

Ids: pid = rank + 1 and tid = pid × 100 + stream index + 1, so no id is 0 (pid 0 is special in Perfetto's
importer, google/perfetto#394) and every tid is unique across processes. Ops of one stream never overlap,
so slices on one thread are sequential; an overlap is a bug in the engine and raises.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from itertools import chain
from typing import Any

import numpy as np

from simulator.engine.trace import Trace
from simulator.report.style import atomic_path, rank_title, stream_sort_key

US_PER_S = 1e6
TID_STRIDE = 100  # tids of rank r's streams are (r + 1) * TID_STRIDE + 1 ...
OVERLAP_TOLERANCE_S = 1e-9  # ops of one stream may touch; overlaps above a nanosecond are a bug


def ordered_streams(trace: Trace) -> list[str]:
    """The trace's stream names in display order: compute, then communication, unknown ones last."""
    return sorted(set(trace.stream), key=stream_sort_key)


def trace_ranks(trace: Trace) -> list[int]:
    """Every simulated rank that has a label or an op, ascending."""
    return sorted(set(trace.rank_labels) | {int(r) for r in np.unique(trace.rank)})


def process_id(rank: int) -> int:
    """The Chrome-trace pid of a simulated rank (never 0)."""
    return rank + 1


def thread_id(rank: int, stream_index: int) -> int:
    """The Chrome-trace tid of a rank's stream, unique across ranks (never 0)."""
    if stream_index >= TID_STRIDE - 1:
        raise ValueError(
            f"at most {TID_STRIDE - 1} streams per rank can be exported, got stream #{stream_index}"
        )
    return process_id(rank) * TID_STRIDE + stream_index + 1


def metadata_events(trace: Trace, streams: list[str]) -> list[dict[str, Any]]:
    """``process_name``/``thread_name`` (and sort-index) metadata for every rank and stream it uses."""
    used = {(int(r), s) for r, s in zip(trace.rank.tolist(), trace.stream, strict=True)}
    events: list[dict[str, Any]] = []
    for order, rank in enumerate(trace_ranks(trace)):
        pid = process_id(rank)
        name = rank_title(rank, trace.rank_labels.get(rank, ""), trace.rank_multiplicity.get(rank, 1))
        events.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": name}})
        events.append(
            {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": order}}
        )
        for index, stream in enumerate(streams):
            if (rank, stream) not in used:
                continue
            tid = thread_id(rank, index)
            events.append(
                {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": stream}}
            )
            events.append(
                {
                    "ph": "M",
                    "name": "thread_sort_index",
                    "pid": pid,
                    "tid": tid,
                    "args": {"sort_index": index},
                }
            )
    return events


def _sorted_rows(trace: Trace, stream_index: np.ndarray) -> np.ndarray:
    """Row indices ordered by (rank, stream, start, end)."""
    return np.lexsort((trace.end_s, trace.start_s, stream_index, trace.rank))


def check_sequential(trace: Trace, order: np.ndarray, stream_index: np.ndarray) -> None:
    """Raise AssertionError if an op ends before it starts or two ops of one rank's stream overlap."""
    bad = np.flatnonzero(trace.end_s < trace.start_s)
    if bad.size:
        i = int(bad[0])
        raise AssertionError(f"op {trace.name[i]!r} on rank {trace.rank[i]} ends before it starts")
    rank, sidx = trace.rank[order], stream_index[order]
    same = (rank[1:] == rank[:-1]) & (sidx[1:] == sidx[:-1])
    overlap = same & (trace.start_s[order][1:] < trace.end_s[order][:-1] - OVERLAP_TOLERANCE_S)
    if overlap.any():
        k = int(np.flatnonzero(overlap)[0])
        a, b = int(order[k]), int(order[k + 1])
        raise AssertionError(
            f"ops {trace.name[a]!r} and {trace.name[b]!r} overlap on rank {trace.rank[a]} stream "
            f"{trace.stream[a]!r}: slices on one track must nest"
        )


def slice_events(trace: Trace, streams: list[str]) -> Iterator[dict[str, Any]]:
    """One complete (``X``) event per op, ordered by rank, stream and start; times in µs."""
    index_of = {s: i for i, s in enumerate(streams)}
    stream_index = np.fromiter((index_of[s] for s in trace.stream), dtype=np.int64, count=len(trace))
    order = _sorted_rows(trace, stream_index)
    check_sequential(trace, order, stream_index)
    ts_us = np.round(trace.start_s * US_PER_S, 3)
    end_us = np.round(trace.end_s * US_PER_S, 3)
    prev: tuple[int, int, float] = (-1, -1, 0.0)  # rank, stream, end of the previous slice on that track
    for i in order.tolist():
        rank, sidx = int(trace.rank[i]), int(stream_index[i])
        start = float(ts_us[i])
        if prev[:2] == (rank, sidx):
            start = max(start, prev[2])  # a sub-ns touch must not become an overlap after rounding
        end = max(float(end_us[i]), start)
        prev = (rank, sidx, end)
        yield _slice(trace, i, process_id(rank), thread_id(rank, sidx), start, end)


def _slice(trace: Trace, i: int, pid: int, tid: int, start_us: float, end_us: float) -> dict[str, Any]:
    """The complete event of row ``i``."""
    micro_batch = int(trace.micro_batch[i])
    return {
        "ph": "X",
        "name": trace.name[i],
        "cat": trace.comm[i] or trace.category[i],
        "pid": pid,
        "tid": tid,
        "ts": start_us,
        "dur": round(end_us - start_us, 3),
        "args": {
            "bytes": float(trace.bytes[i]),
            "model_flops": float(trace.model_flops[i]),
            "hw_flops": float(trace.hw_flops[i]),
            "micro_batch": micro_batch if micro_batch >= 0 else None,
        },
    }


def write_chrome_trace(trace: Trace, path: str | os.PathLike[str]) -> int:
    """Write ``trace`` as Chrome trace JSON to ``path`` (atomically, deterministically); returns the
    number of slices written (one per op)."""
    streams = ordered_streams(trace)
    count = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as out:
        out.write('{"displayTimeUnit":"ms","otherData":{"generator":"clustersim"},"traceEvents":[')
        for n, event in enumerate(chain(metadata_events(trace, streams), slice_events(trace, streams))):
            out.write(("\n" if n == 0 else ",\n") + _dump(event))
            count += event["ph"] == "X"
        out.write("\n]}\n")
    return count


def _dump(event: dict[str, Any]) -> str:
    """One event as compact JSON (UTF-8 text kept readable)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
