"""Export a simulated step as a Chrome trace JSON that opens in Perfetto (ui.perfetto.dev) or chrome://tracing.

Layout of the file (docs/reference.md, "Formats"): one process per simulated rank, named by a ``process_name``
metadata event (``"rank 8 · pp1 (×128)"``: the rank, its class label, how many real ranks it stands for);
one thread per stream of that rank (``compute`` first), named by ``thread_name``; one complete event
(``ph: "X"``) per executed op, ``ts`` and ``dur`` in microseconds rounded to the nanosecond.

Communication can be followed across ranks (issue #10): flow events (``ph: "s"``/``"f"``, bound to the
enclosing slices) link each pipeline send to its receive, and the members of one collective that run on
different simulated ranks, one arrow from each member to the next. The engine completes a transfer or a
collective for all its participants at the same instant (engine/simulation.py), so a send and its receive
are the pp-send-*/pp-recv-* slices of one direction with the same micro-batch, bytes and end time, and
the members of a collective are the slices of one stream, name and micro-batch that end together. Pipeline
peers sit a fixed rank stride apart (world / pp, ``GroupResolver.peer``), so when several replicas make the
same transfer at once, sorted senders pair with sorted receivers exactly. Under ``--full`` the twins of a
collective in other groups end at the same instant too and are linked with it: the trace cannot tell them
apart. With the report's ``tiers``, a "fabric" process carries one counter track per tier with its link
utilisation in percent: the average over the step (the network model records bytes per link, not their
timing), drawn from the step's start to its end.

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
from simulator.report.schema import TierUse
from simulator.report.style import atomic_path, rank_title, stream_sort_key, tier_label

US_PER_S = 1e6
FABRIC_PID = 0x7FFF_FFF0  # the counter tracks' process: above any rank's pid (rank + 1 < 2**31 - 16)
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


def flow_events(trace: Trace, streams: list[str]) -> Iterator[dict[str, Any]]:
    """Flow start/finish pairs: each pipeline send to its receive, and each collective's members (on
    different simulated ranks) in rank order. Each end sits at its slice's midpoint, so Perfetto binds it
    to that slice (``bp: "e"``: the enclosing slice)."""
    index_of = {s: i for i, s in enumerate(streams)}
    end_us = np.round(trace.end_s * US_PER_S, 3)
    mid_us = np.round((trace.start_s + trace.end_s) / 2 * US_PER_S, 3)
    sends: dict[tuple[object, ...], list[int]] = {}
    recvs: dict[tuple[object, ...], list[int]] = {}
    members: dict[tuple[object, ...], list[int]] = {}
    for i in range(len(trace)):
        if trace.category[i] != "comm" or end_us[i] <= np.round(trace.start_s[i] * US_PER_S, 3):
            continue  # only slices with a duration can hold a flow's end
        stream, mb, nbytes = trace.stream[i], int(trace.micro_batch[i]), float(trace.bytes[i])
        if stream.startswith(("pp-send", "pp-recv")):
            direction = stream.split("-", 2)[2:]  # "fwd", "bwd", or nothing
            side = sends if stream.startswith("pp-send") else recvs
            side.setdefault((tuple(direction), mb, nbytes, float(end_us[i])), []).append(i)
        else:
            members.setdefault((stream, trace.name[i], mb, float(end_us[i])), []).append(i)
    pairs: list[tuple[int, int, str]] = []
    for key, out in sends.items():
        into = recvs.get(key, [])
        by_rank = sorted(out, key=lambda i: int(trace.rank[i]))
        targets = sorted(into, key=lambda i: int(trace.rank[i]))
        if len(by_rank) == len(targets):
            pairs += [
                (a, b, "pp") for a, b in zip(by_rank, targets, strict=True) if trace.rank[a] != trace.rank[b]
            ]
    for rows in members.values():
        ranks = sorted({int(trace.rank[i]) for i in rows})
        if len(ranks) < 2:
            continue
        first: dict[int, int] = {}
        for i in rows:
            first.setdefault(int(trace.rank[i]), i)
        chain_rows = [first[r] for r in ranks]
        pairs += [(a, b, trace.comm[a] or "comm") for a, b in zip(chain_rows, chain_rows[1:], strict=False)]
    for n, (a, b, cat) in enumerate(sorted(pairs)):
        for ph, i in (("s", a), ("f", b)):
            rank = int(trace.rank[i])
            event = {
                "ph": ph, "id": n + 1, "name": trace.name[a], "cat": f"flow.{cat}", "pid": process_id(rank),
                "tid": thread_id(rank, index_of[trace.stream[i]]), "ts": float(mid_us[i]),
            }  # fmt: skip
            if ph == "f":
                event["bp"] = "e"
            yield event


def counter_events(tiers: list[TierUse], step_s: float) -> Iterator[dict[str, Any]]:
    """A "fabric" process with one counter track per tier: its average link utilisation (%) over the step,
    from 0 to ``step_s`` (then back to 0)."""
    if not tiers:
        return
    yield {"ph": "M", "name": "process_name", "pid": FABRIC_PID, "tid": 0, "args": {"name": "fabric"}}
    end = round(step_s * US_PER_S, 3)
    for tier in tiers:
        name = f"link utilisation % · {tier_label(tier.tier)}"
        for ts, value in ((0.0, tier.utilization * 100), (end, 0.0)):
            yield {"ph": "C", "name": name, "pid": FABRIC_PID, "tid": 0, "ts": ts, "args": {"value": value}}


def write_chrome_trace(
    trace: Trace,
    path: str | os.PathLike[str],
    *,
    tiers: list[TierUse] | None = None,
    step_s: float | None = None,
) -> int:
    """Write ``trace`` as Chrome trace JSON to ``path`` (atomically, deterministically), with its flow
    events and, given the report's ``tiers``, the link-utilisation counters over ``step_s`` (default: the
    trace's end); returns the number of slices written (one per op)."""
    streams = ordered_streams(trace)
    span = step_s if step_s is not None else (float(trace.end_s.max()) if len(trace) else 0.0)
    count = 0
    events = chain(
        metadata_events(trace, streams),
        slice_events(trace, streams),
        flow_events(trace, streams),
        counter_events(list(tiers or []), span),
    )
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as out:
        out.write('{"displayTimeUnit":"ms","otherData":{"generator":"clustersim"},"traceEvents":[')
        for n, event in enumerate(events):
            out.write(("\n" if n == 0 else ",\n") + _dump(event))
            count += event["ph"] == "X"
        out.write("\n]}\n")
    return count


def _dump(event: dict[str, Any]) -> str:
    """One event as compact JSON (UTF-8 text kept readable)."""
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)
