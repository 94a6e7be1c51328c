"""The 530B layout search on 5,040 A100 (issue #11): space, what was timed, wall and CPU time, best layout.

Runs ``run_search`` (the same as ``clustersim search``) on ``scenarios/search/530b-5040-a100.yaml`` and
prints the counts of the space, the wall time, the CPU time of this process and its worker processes
(user + system, from ``resource.getrusage``), the best layouts with their fast-path and engine step times,
and the largest fast-path / engine difference among the confirmed layouts.

Usage: python benchmarks/bench_search.py [--workers 2] [--max-points 400] [--top 10] [SCENARIO]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.commands.search import counts  # noqa: E402
from simulator.planning.search import SearchOptions, run_search  # noqa: E402
from simulator.scenario import load_scenario  # noqa: E402


def cpu_s() -> float:
    """User + system seconds of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    """Search and print the figures as Markdown."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("scenario", nargs="?", default=str(ROOT / "scenarios/search/530b-5040-a100.yaml"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-points", type=int, default=400)
    ap.add_argument("--top", type=int, default=10)
    args = ap.parse_args()
    scenario = load_scenario(args.scenario)
    w0, c0 = time.perf_counter(), cpu_s()
    result = run_search(
        scenario, SearchOptions(top=args.top, max_points=args.max_points, workers=args.workers)
    )
    wall, cpu = time.perf_counter() - w0, cpu_s() - c0
    c = counts(result)
    print(
        f"scenario: {args.scenario}, workers {args.workers}, --max-points {args.max_points}, --top {args.top}"
    )
    print(f"| space | pruned | capped | bounded | simulated (fast path) | infeasible | marked | confirmed "
          f"| wall | CPU |\n|---|---|---|---|---|---|---|---|---|---|\n| {c['space']:,} | {c['pruned']:,} | "
          f"{c['capped']} | {c['bounded']} | {c['simulated']} | {c['infeasible']} | {c['contended']} | "
          f"{c['refined']} | {wall:.1f} s | {cpu:.1f} s |")  # fmt: skip
    print(
        "\n| # | layout | fast path step | engine step | difference | marked | MFU |\n|---|---|---|---|---|---|---|"
    )
    diffs = []
    for i, e in enumerate(result.ranked[: args.top], start=1):
        fast = e.fast_step_s
        d = "" if fast is None else f"{fast / e.report.step_time_s - 1:+.3%}"
        if fast is not None:
            diffs.append(abs(fast / e.report.step_time_s - 1))
        print(f"| {i}{'*' if e.own else ''} | {e.label} | {'' if fast is None else f'{fast:.3f} s'} | "
              f"{e.report.step_time_s:.3f} s | {d} | {e.contended} | {e.report.mfu:.1%} |")  # fmt: skip
    every = [
        abs(e.fast_step_s / e.report.step_time_s - 1) for e in result.ranked if e.fast_step_s is not None
    ]
    print(f"\nconfirmed layouts: {len(every)}, largest fast-path difference {max(every, default=0):.3%}")


if __name__ == "__main__":
    main()
