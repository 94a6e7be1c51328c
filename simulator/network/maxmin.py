"""Max-min fair rates of concurrent coflows on shared directed links.

A coflow is a phase of a collective: its flows move in lockstep, so its progress is one number, the rate
r_p (bytes/s) of its largest flow. On link l it then uses r_p·k_{p,l}, with
k_{p,l} = (bytes of p crossing l) / (bytes of p's largest flow). Rates come from progressive filling
(Bertsekas & Gallager, *Data Networks*, 2nd ed., §6.5, max-min flow control): raise every unfrozen r_p
at the same pace; when a link saturates (Σ_p r_p·k_{p,l} = C_l) freeze every coflow crossing it; repeat.
With one flow per link per coflow this is per-flow max-min fairness. A coflow that crosses no link gets
rate inf.

Each round freezes at least one coflow (all coflows of every link saturating at the same level), so
there are at most P rounds; a round costs O(links) plus the entries of the coflows it freezes. Measured
(one core, numpy 2.x): 20,000 routed flows in 200 coflows on 8,192 links ≈ 15 ms; the worst case,
20,000 one-flow coflows with ~5,000 distinct levels, ≈ 0.3 s; a single coflow ≈ 30 µs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_TIE_RTOL = 1e-12  # links saturating within this relative level of the first freeze together


def coflow_link_loads(
    path_indptr: np.ndarray,
    path_links: np.ndarray,
    flow_bytes: np.ndarray,
    entry_fraction: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(link ids, k) of one coflow from its flows' routed paths in CSR form.

    Flow f crosses ``path_links[path_indptr[f]:path_indptr[f+1]]``; ``entry_fraction`` (optional, one per
    entry) is the share of the flow on that link when the router splits it over several paths.
    """
    flow_bytes = np.asarray(flow_bytes, dtype=np.float64)
    largest = float(flow_bytes.max()) if flow_bytes.size else 0.0
    if largest <= 0.0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    ptr = np.asarray(path_indptr, dtype=np.int64)
    weight = np.repeat(flow_bytes / largest, ptr[1:] - ptr[:-1])
    if entry_fraction is not None:
        weight = weight * np.asarray(entry_fraction, dtype=np.float64)
    links, inv = np.unique(np.asarray(path_links, dtype=np.int64), return_inverse=True)
    k = np.bincount(inv, weights=weight, minlength=links.size)
    keep = k > 0
    return links[keep], k[keep]


def maxmin_rates(
    capacity_bytes_per_s: np.ndarray,
    coflows: Sequence[tuple[np.ndarray, np.ndarray]],
    rate_cap_bytes_per_s: np.ndarray | None = None,
) -> np.ndarray:
    """Max-min fair rate (bytes/s of its largest flow) of each coflow given as (link ids, k)."""
    lengths = np.array([len(links) for links, _ in coflows], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    links = (
        np.concatenate([np.asarray(c[0], dtype=np.int64) for c in coflows])
        if coflows
        else np.zeros(0, np.int64)
    )
    k = np.concatenate([np.asarray(c[1], dtype=np.float64) for c in coflows]) if coflows else np.zeros(0)
    return maxmin_rates_csr(capacity_bytes_per_s, indptr, links, k, rate_cap_bytes_per_s)


def maxmin_rates_csr(
    capacity_bytes_per_s: np.ndarray,
    indptr: np.ndarray,
    links: np.ndarray,
    k: np.ndarray,
    rate_cap_bytes_per_s: np.ndarray | None = None,
) -> np.ndarray:
    """Max-min fair coflow rates; coflow p loads ``links[indptr[p]:indptr[p+1]]`` by ``k`` per unit rate.

    ``rate_cap_bytes_per_s`` (optional, per coflow, inf for none) bounds a coflow's own rate, like a
    private link of that capacity.
    """
    num = len(indptr) - 1
    cap = np.asarray(capacity_bytes_per_s, dtype=np.float64)
    ptr = np.asarray(indptr, dtype=np.int64)
    rows = np.repeat(np.arange(num), ptr[1:] - ptr[:-1])
    links = np.asarray(links, dtype=np.int64)
    k = np.asarray(k, dtype=np.float64)
    if rate_cap_bytes_per_s is not None:  # a private link per capped coflow
        capped = np.flatnonzero(np.isfinite(rate_cap_bytes_per_s))
        rows = np.concatenate([rows, capped])
        links = np.concatenate([links, cap.size + np.arange(capped.size)])
        k = np.concatenate([k, np.ones(capped.size)])
        cap = np.concatenate([cap, np.asarray(rate_cap_bytes_per_s, dtype=np.float64)[capped]])
    keep = k > 0
    used, col = compact_ids(links[keep], cap.size)
    if num == 1:  # one coflow: its bottleneck link
        per_link = np.bincount(col, weights=k[keep], minlength=used.size)
        return np.array([np.min(cap[used] / per_link, initial=np.inf)])
    return _progressive_filling(cap[used], num, rows[keep], col, k[keep])


def _progressive_filling(
    cap: np.ndarray, num: int, rows: np.ndarray, cols: np.ndarray, k: np.ndarray, unique: bool = False
) -> np.ndarray:
    """Progressive filling; coflow ``rows[i]`` loads compacted link ``cols[i]`` by ``k[i]`` (``unique``:
    no (coflow, link) pair twice, so nothing to sum)."""
    nlinks = cap.size
    load = _Csr.build(rows, cols, k, num, nlinks, known_unique=unique)  # coflow → links, duplicates summed
    by_link = _Csr.build(load.indices, load.row_of_entry(), load.data, nlinks, num, transpose=True)
    rates = np.full(num, np.inf)
    frozen = np.diff(load.indptr) == 0
    remaining = num - int(frozen.sum())
    unit = np.bincount(load.indices, weights=load.data, minlength=nlinks)  # load per unit level (unfrozen)
    crossing = np.bincount(load.indices, minlength=nlinks)  # unfrozen coflows on each link
    fixed = np.zeros(nlinks)  # load of frozen coflows
    level = np.full(nlinks, np.inf)  # common level at which each link would saturate
    _update_levels(level, np.arange(nlinks), cap, fixed, unit, crossing)
    prev = 0.0
    while remaining:
        top = prev = max(float(level.min()), prev)  # rounding never lowers the level
        saturated = np.flatnonzero(level <= top * (1 + _TIE_RTOL))
        cands = by_link.indices[_ranges(by_link.indptr, saturated)]
        newly = np.unique(cands[~frozen[cands]])
        assert newly.size, "progressive filling stalled"
        rates[newly] = top
        frozen[newly] = True
        remaining -= newly.size
        pos = _ranges(load.indptr, newly)
        # per link, the load of the newly frozen coflows, summed in entry order (as a sort-based grouping
        # would: bincount adds each bin's weights in input order), without sorting the entries
        hit = np.bincount(load.indices[pos], minlength=nlinks)
        touched = np.flatnonzero(hit)
        dk = np.bincount(load.indices[pos], weights=load.data[pos], minlength=nlinks)[touched]
        unit[touched] -= dk
        fixed[touched] += top * dk
        crossing[touched] -= hit[touched]
        _update_levels(level, touched, cap, fixed, unit, crossing)
    return rates


@dataclass(frozen=True)
class _Csr:
    """Compressed sparse rows: row r holds ``indices[indptr[r]:indptr[r+1]]`` with ``data``."""

    indptr: np.ndarray
    indices: np.ndarray
    data: np.ndarray

    @staticmethod
    def build(
        rows: np.ndarray,
        cols: np.ndarray,
        data: np.ndarray,
        nrows: int,
        ncols: int,
        transpose: bool = False,
        known_unique: bool = False,
    ) -> _Csr:
        """From (row, col, value) triplets; duplicates summed (``transpose`` or ``known_unique``: there are
        none, the entries are only sorted: distinct keys, so any sort gives the order a stable one would,
        and the values are those a sum of one term gives)."""
        key = rows * ncols + cols
        if transpose or known_unique:
            order = np.argsort(key)
            key, data = key[order], data[order]
        elif key.size and not np.all(key[1:] > key[:-1]):  # already sorted and unique: nothing to sum
            key, inv = np.unique(key, return_inverse=True)
            data = np.bincount(inv, weights=data, minlength=key.size)
        indptr = np.concatenate([[0], np.cumsum(np.bincount(key // ncols, minlength=nrows))])
        return _Csr(indptr, key % ncols, data)

    def row_of_entry(self) -> np.ndarray:
        """Row index of every stored entry."""
        return np.repeat(np.arange(self.indptr.size - 1), np.diff(self.indptr))


def _update_levels(
    level: np.ndarray,
    links: np.ndarray,
    cap: np.ndarray,
    fixed: np.ndarray,
    unit: np.ndarray,
    crossing: np.ndarray,
) -> None:
    """Recompute, in place, the saturation level of ``links``; inf where no unfrozen coflow remains."""
    active = crossing[links] > 0
    unit[links[~active]] = 0.0
    on = links[active]
    level[links[~active]] = np.inf
    level[on] = np.maximum(cap[on] - fixed[on], 0.0) / unit[on]


def distinct_constraints(
    rows: np.ndarray, links: np.ndarray, k: np.ndarray, capacity: np.ndarray
) -> np.ndarray:
    """Which entries (coflow ``rows[i]`` loads link ``links[i]`` by ``k[i]``, no link twice in a coflow) to
    keep so that every link left is the first of its kind: two links with the same capacity and the same
    (coflow, k) pairs are the same constraint, saturate at the same level in every round of progressive
    filling and freeze the same coflows, so dropping all but one leaves the rates unchanged bit for bit
    (each link's sums are over the same values in the same coflow order). On a fat-tree the links the
    data-parallel rings of several stages share are thousands of copies of a few such columns (issue #11).

    Columns are told apart by a multiset hash (a wrapping sum of SplitMix64 values of (coflow, k) plus the
    capacity's): equal columns always hash equal; different ones collide with probability ~2**-64, as the
    symmetry fingerprints (``engine/symmetry.py``)."""
    used, col = compact_ids(links, capacity.size)
    return distinct_columns(rows, col, k, capacity[used])[col]


def distinct_columns(rows: np.ndarray, col: np.ndarray, k: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """``distinct_constraints`` on compacted links (entry i on link ``col[i]`` of capacity
    ``capacity[col[i]]``): whether each link is the first of its kind, one flag per link."""
    tag = _mix64(
        rows.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ k.astype(np.float64).view(np.uint64)
    )
    column = _mix64(capacity.astype(np.float64).view(np.uint64))
    np.add.at(column, col, tag)  # wraps modulo 2**64 by design
    # the first link of each run of equal hashes: ``np.unique(column, return_index=True)``'s, by the
    # smallest index of each run after an unstable sort (a stable one was most of this function's cost)
    order = np.argsort(column)
    ordered = column[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    is_first = np.zeros(capacity.size, dtype=bool)
    if order.size:
        is_first[np.minimum.reduceat(order, starts)] = True
    return is_first


def filling_with_caps(
    cap: np.ndarray,
    num: int,
    rows: np.ndarray,
    col: np.ndarray,
    k: np.ndarray,
    kept: np.ndarray,
    rate_cap_bytes_per_s: np.ndarray,
) -> np.ndarray:
    """``maxmin_rates_csr`` (``num`` > 1 coflows, entries in coflow order, every k > 0) on compacted links,
    keeping only the links flagged ``kept`` (``cap``: theirs, in link order): the same filling on the
    same arrays, without compacting link ids again (``FlowNetwork`` compacts them once per allocation)."""
    sel = kept[col]
    index = np.cumsum(kept) - 1
    capped = np.flatnonzero(np.isfinite(rate_cap_bytes_per_s))
    return _progressive_filling(
        np.concatenate([cap, rate_cap_bytes_per_s[capped]]),
        num,
        np.concatenate([rows[sel], capped]),
        np.concatenate([index[col[sel]], cap.size + np.arange(capped.size)]),
        np.concatenate([k[sel], np.ones(capped.size)]),
        unique=True,
    )


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (Steele, Lea & Flood 2014) on uint64, wrapping by design."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def compact_ids(links: np.ndarray, n_links: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(links, return_inverse=True)`` for ids below ``n_links``, by marking instead of sorting
    (a network's links number in the millions, a max-min problem's entries in the hundreds of thousands)."""
    if links.size * 8 < n_links:  # few entries: sorting them is cheaper than a pass over every link
        used, col = np.unique(links, return_inverse=True)
        return used, col.ravel()
    present = np.zeros(n_links, dtype=bool)
    present[links] = True
    used = np.flatnonzero(present)
    index = np.cumsum(present) - 1
    return used, index[links]


def _ranges(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions of the entries of ``rows`` in a CSR structure with ``indptr``."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total)
