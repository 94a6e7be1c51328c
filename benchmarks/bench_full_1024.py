"""``--full`` against the symmetric run on GPT-3 175B over 1,024 A100 (issues #10.3 and #11).

Usage: python benchmarks/bench_full_1024.py [--set KEY=VALUE ...] [--skip-symmetric]
Simulates ``scenarios/gpt3-175b-1024-a100.yaml`` (tp 8 · pp 8 interleaved · dp 16 on the DGX A100 SuperPOD
fabric) once rank by rank (``mode="full"``) and once reduced to symmetry classes, and prints one Markdown
row per mode: simulated ranks, engine events, step time, bubble and pipeline/data-parallel communication
time, and the CPU time (user + system of this process, which a machine shared with other work inflates
much less than wall time) and wall time of ``simulate()`` (scenario loading excluded); then how far the
reduced step is from ``--full``. Targets: ``--full`` in at most 60 s CPU (issue #11); the two steps within
0.1% of each other (issue #10). It is a benchmark, not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.scenario import load_scenario  # noqa: E402
from simulator.simulate import simulate  # noqa: E402

SCENARIO = "scenarios/gpt3-175b-1024-a100.yaml"
FULL_CPU_TARGET_S = 60.0  # issue #11
AGREEMENT_REL = 1e-3  # issue #10


def main() -> None:
    """Run both modes and print the table and the agreement."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="scenario override")
    parser.add_argument("--skip-symmetric", action="store_true", help="time --full only")
    args = parser.parse_args()
    scenario = load_scenario(ROOT / SCENARIO, args.set)
    print("| mode | simulated ranks | events | step | bubble | pp comm | dp comm | CPU | wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    steps, full_cpu = {}, 0.0
    for mode in ("full",) if args.skip_symmetric else ("full", "symmetric"):
        t0, c0 = time.perf_counter(), time.process_time()
        r = simulate(scenario, mode=mode).report
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        steps[mode] = r.step_time_s
        full_cpu = cpu if mode == "full" else full_cpu
        print(
            f"| {mode} | {r.simulated_ranks:,} | {r.events:,} | {r.step_time_s:.4f} s | {r.breakdown.bubble_s:.4f} s "
            f"| {r.comm.pp_s:.5f} s | {r.comm.dp_s:.5f} s | {cpu:.1f} s | {wall:.1f} s |",
            flush=True,
        )
    verdict = "within" if full_cpu <= FULL_CPU_TARGET_S else "ABOVE"
    print(f"\n--full CPU {full_cpu:.1f} s: {verdict} the {FULL_CPU_TARGET_S:.0f} s target")
    if "symmetric" in steps:
        rel = steps["symmetric"] / steps["full"] - 1.0
        verdict = "within" if abs(rel) <= AGREEMENT_REL else "OUTSIDE"
        print(f"symmetric vs --full step: {rel:+.3e} ({verdict} ±{AGREEMENT_REL:g})")


if __name__ == "__main__":
    main()
