"""Wall time to simulate one training step of shipped scenarios (issue #2: 1,024-GPU GPT-3 175B < 5 s).

Usage: python benchmarks/bench_step.py [--repeat N] [SCENARIO ...]
Prints, per scenario: GPUs, simulated ranks, engine events, the median / min wall time of ``simulate()``
(topology build, program build, engine run and report; scenario loading excluded) and the min CPU time
(user + system of this process), which a machine shared with other work inflates much less than wall.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.scenario import load_scenario  # noqa: E402
from simulator.simulate import simulate  # noqa: E402

DEFAULT = [
    "scenarios/quickstart.yaml",
    "scenarios/gpt3-175b-1024-a100.yaml",
    "scenarios/validation/megatron-2021-a100/gpt-1t.yaml",
    "scenarios/validation/llama3-405b-h100/405b-8k-16384gpu.yaml",
]


def bench(path: str, repeat: int) -> tuple[int, int, int, float, float, float, float]:
    """(gpus, simulated ranks, events, step time s, median wall s, min wall s, min CPU s) of ``repeat`` runs."""
    scenario = load_scenario(ROOT / path)
    walls, cpus = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        report = simulate(scenario).report
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return (
        report.gpus,
        report.simulated_ranks,
        report.events,
        report.step_time_s,
        statistics.median(walls),
        min(walls),
        min(cpus),
    )


def main() -> None:
    """Run the benchmarks and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenarios", nargs="*", default=DEFAULT)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(
        "| scenario | GPUs | simulated ranks | events | simulated step | wall (median) | wall (min) | CPU (min) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for path in args.scenarios:
        gpus, ranks, events, step, med, best, cpu = bench(path, args.repeat)
        print(
            f"| `{path}` | {gpus:,} | {ranks} | {events:,} | {step:.2f} s | {med:.2f} s | {best:.2f} s "
            f"| {cpu:.2f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main()
