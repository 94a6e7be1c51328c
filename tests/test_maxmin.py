"""Max-min fair coflow rates: closed-form cases, then feasibility and optimality on random instances."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.network.maxmin import (
    coflow_link_loads,
    compact_ids,
    distinct_columns,
    distinct_constraints,
    filling_with_caps,
    maxmin_rates,
    maxmin_rates_csr,
)

C = 100e9


def test_two_coflows_sharing_a_link_get_half_each():
    rates = maxmin_rates(np.array([C]), [(np.array([0]), np.array([1.0]))] * 2)
    assert rates == pytest.approx([C / 2, C / 2], rel=1e-12)


def test_single_path_bottleneck_is_the_smallest_capacity():
    cap = np.array([10e9, 3e9, 7e9, 1e9])
    rates = maxmin_rates(cap, [(np.array([0, 1, 2]), np.ones(3))])
    assert rates == pytest.approx([3e9], rel=1e-12)


def test_two_flow_coflow_gets_half_the_per_flow_rate_on_its_own_link():
    """A coflow with two equal flows on one link (k = 2) next to a one-flow coflow on another link of
    equal capacity: half the per-flow rate; on a shared link every flow gets the same rate, C/3."""
    cap = np.array([C, C])
    apart = maxmin_rates(cap, [(np.array([0]), np.array([2.0])), (np.array([1]), np.array([1.0]))])
    assert apart == pytest.approx([C / 2, C], rel=1e-12)
    shared = maxmin_rates(cap, [(np.array([0]), np.array([2.0])), (np.array([0]), np.array([1.0]))])
    assert shared == pytest.approx([C / 3, C / 3], rel=1e-12)


def test_textbook_per_flow_max_min():
    """Bertsekas & Gallager-style example: link A (1) carries f1, f2; link B (2) carries f2, f3."""
    cap = np.array([1.0, 2.0])
    coflows = [(np.array([0]), np.ones(1)), (np.array([0, 1]), np.ones(2)), (np.array([1]), np.ones(1))]
    assert maxmin_rates(cap, coflows) == pytest.approx([0.5, 0.5, 1.5], rel=1e-12)


def test_coflow_touching_no_link_is_unbounded():
    cap = np.array([C])
    rates = maxmin_rates(cap, [(np.zeros(0, np.int64), np.zeros(0)), (np.array([0]), np.array([0.0]))])
    assert np.isinf(rates).all()
    assert maxmin_rates(cap, []).size == 0


def test_rate_cap_acts_as_a_private_link():
    cap = np.array([C])
    coflows = [(np.array([0]), np.ones(1))] * 2
    rates = maxmin_rates(cap, coflows, rate_cap_bytes_per_s=np.array([C / 10, np.inf]))
    assert rates == pytest.approx([C / 10, 0.9 * C], rel=1e-12)


def test_coflow_link_loads_from_paths():
    indptr = np.array([0, 2, 4, 4])  # flow 2 crosses nothing (same node)
    links = np.array([0, 1, 1, 2])
    links_out, k = coflow_link_loads(indptr, links, np.array([2.0, 1.0, 5.0]))
    assert links_out.tolist() == [0, 1, 2]
    assert k == pytest.approx([0.4, 0.6, 0.2])
    split = coflow_link_loads(np.array([0, 2]), np.array([3, 4]), np.array([1.0]), np.array([0.5, 0.5]))
    assert split[0].tolist() == [3, 4] and split[1] == pytest.approx([0.5, 0.5])
    assert coflow_link_loads(np.array([0, 1]), np.array([0]), np.array([0.0]))[0].size == 0


def _reference(cap: np.ndarray, a: np.ndarray) -> np.ndarray:
    """Plain progressive filling on a dense [coflows, links] matrix (no vectorisation tricks)."""
    num = a.shape[0]
    rates = np.full(num, np.inf)
    free = a.sum(axis=1) > 0
    level = 0.0
    while free.any():
        fixed = a[~free & np.isfinite(rates)].T @ rates[~free & np.isfinite(rates)]
        unit = a[free].sum(axis=0)
        with np.errstate(divide="ignore"):
            lv = np.where(unit > 0, (cap - fixed) / np.where(unit > 0, unit, 1), np.inf)
        level = max(lv.min(), level)
        sat = lv <= level * (1 + 1e-9)
        hit = free & (a[:, sat] > 0).any(axis=1)
        rates[hit] = level
        free &= ~hit
    return rates


@st.composite
def instances(draw):
    links = draw(st.integers(1, 6))
    num = draw(st.integers(1, 8))
    cap = np.array(draw(st.lists(st.floats(0.5, 100.0), min_size=links, max_size=links)))
    k = draw(
        st.lists(
            st.sampled_from([0.0, 0.0, 0.5, 1.0, 1.0, 2.0, 3.5]), min_size=num * links, max_size=num * links
        )
    )
    return cap, np.array(k).reshape(num, links)


@settings(max_examples=200, deadline=None)
@given(instances())
def test_feasible_and_max_min_optimal(inst):
    cap, a = inst
    p_idx, l_idx = np.nonzero(a)
    indptr = np.searchsorted(p_idx, np.arange(a.shape[0] + 1))
    rates = maxmin_rates_csr(cap, indptr, l_idx, a[p_idx, l_idx])
    finite = np.isfinite(rates)
    assert (finite == (a.sum(axis=1) > 0)).all()
    used = a[finite].T @ rates[finite]
    assert (used <= cap * (1 + 1e-9)).all(), "a link is over capacity"
    saturated = used >= cap * (1 - 1e-9)
    for p in np.flatnonzero(finite):
        # a bottleneck: a saturated link of p on which no other coflow has a higher rate
        ok = [
            saturated[j] and rates[p] >= rates[a[:, j] > 0].max() * (1 - 1e-9) for j in np.flatnonzero(a[p])
        ]
        assert any(ok), f"coflow {p} has no bottleneck link"
    assert rates == pytest.approx(_reference(cap, a), rel=1e-9)


def test_20000_flows_get_finite_feasible_rates():
    """20,000 routed flows in 200 coflows over 8,192 links (timed in benchmarks/bench_speed.py)."""
    rng = np.random.default_rng(1)
    cap = rng.choice([25e9, 50e9, 450e9], size=8192)
    paths = []
    for _ in range(200):
        hops = rng.integers(1, 7, size=100)
        indptr = np.concatenate([[0], np.cumsum(hops)])
        paths.append((indptr, rng.integers(0, cap.size, size=indptr[-1]), rng.choice([0.5, 1.0], size=100)))
    rates = maxmin_rates(cap, [coflow_link_loads(*p) for p in paths])
    assert rates.shape == (200,) and np.isfinite(rates).all() and (rates > 0).all()


def test_20000_single_flow_coflows_get_finite_rates():
    """The worst case for rounds: per-flow max-min of 20,000 flows with thousands of distinct levels
    (timed in benchmarks/bench_speed.py)."""
    rng = np.random.default_rng(2)
    cap = rng.choice([25e9, 50e9, 450e9], size=8192) * rng.uniform(0.5, 1.5, size=8192)
    hops = rng.integers(1, 7, size=20000)
    indptr = np.concatenate([[0], np.cumsum(hops)])
    links = rng.integers(0, cap.size, size=indptr[-1])
    rates = maxmin_rates_csr(cap, indptr, links, np.ones(links.size))
    assert rates.shape == (20000,) and np.isfinite(rates).all() and (rates > 0).all()


def test_duplicate_links_are_dropped_and_the_rates_do_not_move():
    """Copies of a link (same capacity, same coflows at the same loads) are one constraint: links 0-3 carry
    coflows 0 and 1 at load 1 (capacity C: C/2 each), link 4 only coflow 1 (a copy of nothing), link 5 the
    two coflows at another load; only the first copy of each column stays, and the rates are bit-identical."""
    cap = np.array([C, C, C, C, C, 2 * C])
    rows = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    links = np.array([0, 1, 2, 3, 5, 0, 1, 2, 3, 4, 5])
    k = np.array([1.0, 1.0, 1.0, 1.0, 2.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0])
    keep = distinct_constraints(rows, links, k, cap)
    assert sorted(set(links[keep].tolist())) == [0, 4, 5]
    indptr = np.array([0, 5, 11])
    full = maxmin_rates_csr(cap, indptr, links, k)
    kept = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=2))])
    assert np.array_equal(maxmin_rates_csr(cap, kept, links[keep], k[keep]), full)
    assert full == pytest.approx([C / 2, C / 2], rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31))
def test_dropping_duplicate_links_keeps_random_rates_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(1, 6, size=(4, 6)) * (rng.random((4, 6)) < 0.6)  # 4 coflows x 6 link columns
    copies = rng.integers(1, 4, size=6)
    a = np.repeat(base, copies, axis=1)  # each column copied 1-3 times
    cap = np.repeat(rng.choice([C, 2 * C], size=6), copies)
    rows, links = np.nonzero(a)
    k = a[rows, links].astype(float)
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=4))])
    keep = distinct_constraints(rows, links, k, cap)
    assert keep.sum() <= np.count_nonzero(base)
    kept = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=4))])
    full = maxmin_rates_csr(cap, indptr, links, k)
    assert np.array_equal(maxmin_rates_csr(cap, kept, links[keep], k[keep]), full)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31))
def test_filling_on_compacted_distinct_links_with_caps_is_maxmin_rates_csr_bit_for_bit(seed):
    """The flow model's path (links compacted once, ``distinct_columns`` on them, ``filling_with_caps``)
    gives ``maxmin_rates_csr``'s rates after ``distinct_constraints``, with private rate caps, bit for bit."""
    rng = np.random.default_rng(seed)
    num = int(rng.integers(2, 7))
    base = rng.integers(1, 6, size=(num, 6)) * (rng.random((num, 6)) < 0.6)
    copies = rng.integers(1, 4, size=6)
    a = np.repeat(base, copies, axis=1)  # each column copied 1-3 times
    ids = np.sort(rng.choice(1000, size=a.shape[1], replace=False))  # spread over a network's link ids
    capacity = np.full(1000, 3 * C)
    capacity[ids] = np.repeat(rng.choice([C, 2 * C], size=6), copies)
    rows, j = np.nonzero(a)
    links, k = ids[j], a[rows, j] / rng.choice([1.0, 0.9, 0.85])
    private = np.where(rng.random(num) < 0.7, rng.choice([C / 4, C / 2, C, 3 * C], size=num), np.inf)
    keep = distinct_constraints(rows, links, k, capacity)
    kept = np.concatenate([[0], np.cumsum(np.bincount(rows[keep], minlength=num))])
    expected = maxmin_rates_csr(capacity, kept, links[keep], k[keep], private)
    used, col = compact_ids(links, capacity.size)
    first = distinct_columns(rows, col, k, capacity[used])
    assert np.array_equal(first[col], keep)
    assert np.array_equal(
        filling_with_caps(capacity[used[first]], num, rows, col, k, first, private), expected
    )
