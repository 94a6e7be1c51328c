"""The search's fast path against the full engine over a few hundred random layouts (issue #11).

For each layout drawn (seeded) from the search space of a scenario: the fast path's step time and whether it
marks contention (``simulator.planning.fastpath``), and the engine's step time with the scenario's own
network model (``simulate()``, flow). Prints the agreement (largest relative difference, unmarked and
marked) and the CPU time per layout of each.

Scenarios: the two clusters of ``tests/test_fast_path.py`` (many cheap layouts) and the 530B search scenario
(``scenarios/search/530b-5040-a100.yaml``, a few expensive ones).

Usage: python benchmarks/bench_fast_path.py [--small N] [--large N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import scenario_doc  # noqa: E402
from test_fast_path import _scenarios  # noqa: E402

from simulator.planning.fastpath import FastPath  # noqa: E402
from simulator.planning.search_space import build_space, with_layout  # noqa: E402
from simulator.scenario import Scenario, load_scenario  # noqa: E402
from simulator.simulate import simulate  # noqa: E402
from simulator.topology.loader import build_cluster  # noqa: E402


def run(name: str, scenario: Scenario, count: int, seed: int) -> list[dict[str, object]]:
    """``count`` random candidates of ``scenario``'s space, timed both ways."""
    cluster = build_cluster(scenario.topology, file=scenario.topology_file)
    layouts = list(build_space(scenario, cluster, 100_000).candidates)
    random.Random(seed).shuffle(layouts)
    fast_path = FastPath(cluster)
    rows = []
    for lay in layouts[:count]:
        sc = with_layout(scenario, lay)
        c0 = time.process_time()
        fast = fast_path.evaluate(sc)
        c1 = time.process_time()
        ref = simulate(sc).report
        c2 = time.process_time()
        rows.append({"name": name, "layout": lay.label, "marked": fast.contended,
                     "diff": fast.report.step_time_s / ref.step_time_s - 1, "fast_cpu": c1 - c0,
                     "engine_cpu": c2 - c1})  # fmt: skip
    return rows


def summary(rows: list[dict[str, object]], label: str) -> str:
    """One Markdown row."""
    unmarked = [abs(float(r["diff"])) for r in rows if not r["marked"]]  # type: ignore[arg-type]
    marked = [abs(float(r["diff"])) for r in rows if r["marked"]]  # type: ignore[arg-type]
    within = sum(abs(float(r["diff"])) <= 0.01 for r in rows)  # type: ignore[arg-type]
    fast = statistics.median(float(r["fast_cpu"]) for r in rows)  # type: ignore[arg-type]
    eng = statistics.median(float(r["engine_cpu"]) for r in rows)  # type: ignore[arg-type]
    return (f"| {label} | {len(rows)} | {len(marked)} | {max(unmarked, default=0):.1e} | "
            f"{max(marked, default=0):.2%} | {within}/{len(rows)} | {fast:.3f} s | {eng:.3f} s |")  # fmt: skip


def main() -> None:
    """Draw, time, print."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--small", type=int, default=150, help="layouts per small cluster")
    ap.add_argument("--large", type=int, default=6, help="layouts of the 530B scenario")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    print(
        "| scenario | layouts | marked | worst unmarked | worst marked | within 1% | fast CPU/layout (median) "
        "| engine CPU/layout (median) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    every: list[dict[str, object]] = []
    for name, scenario, _ in _scenarios(scenario_doc):
        rows = run(name, scenario, args.small, args.seed)
        every += rows
        print(summary(rows, name), flush=True)
    if args.large:
        rows = run(
            "530b-5040-a100",
            load_scenario(ROOT / "scenarios/search/530b-5040-a100.yaml"),
            args.large,
            args.seed,
        )
        every += rows
        print(summary(rows, "530b-5040-a100"), flush=True)
    print(summary(every, "all"))
    worst = sorted(every, key=lambda r: -abs(float(r["diff"])))[:5]  # type: ignore[arg-type]
    print(
        "\nlargest differences (all marked for contention):"
        if all(r["marked"] for r in worst)
        else "\nlargest:"
    )
    for r in worst:
        print(f"- {r['name']} {r['layout']}: {float(r['diff']):+.2%} (marked: {r['marked']})")  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
