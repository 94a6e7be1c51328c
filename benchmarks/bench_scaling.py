"""Wall and CPU time of one Llama 3 405B step against the GPU count, 64 to 131,072 GPUs (issue #11).

The scenario is the shipped 16,384-GPU one (``scenarios/validation/llama3-405b-h100/405b-8k-16384gpu.yaml``:
TP 8, interleaved PP 16 × 8 virtual stages, flow network on the 3-tier NDR fat-tree of ``dgx-h100``) with
``cluster.nodes`` = GPUs / 8 and 16 micro-batches per pipeline (global batch 16 · dp), so that the simulated
ranks and events stay the same while the fabric grows; at 64 GPUs it is PP 8 × 16 virtual stages (the same
128 virtual stages), dp 1. The radix-64 NDR fabric holds at most 65,536 GPUs; beyond, the same hosts run on
``topologies/dgx-h100-xdr.yaml`` (radix-128 Quantum-X800 fat-tree), and ``--fabric xdr`` runs every size
there (its step equals the NDR one's where both exist: both are full-bisection for 400 Gb/s NICs). Times are of
``simulate()`` (topology build included, scenario loading excluded), the minimum of ``--repeat`` runs; CPU is
this process's user + system time. The 1-minute load average is printed with each row: other jobs on the
machine inflate both times.

Usage: python benchmarks/bench_scaling.py [--repeat N] [--gpus 64,512,...] [--fabric auto|ndr|xdr]
       [--chart docs/images/wall-vs-gpus.png [--before earlier-table.md]]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from simulator.scenario import load_scenario  # noqa: E402
from simulator.simulate import simulate  # noqa: E402

SCENARIO = ROOT / "scenarios/validation/llama3-405b-h100/405b-8k-16384gpu.yaml"
GPUS = (64, 128, 512, 2048, 8192, 16384, 32768, 65536, 131072)
MICRO_BATCHES = 16  # per pipeline: a multiple of pp for the interleaved schedule
# 65,536 GPUs is the most the scenario's fabric holds (3 tiers of radix-64 switches: 2,048 leaves of 32 NICs)
NDR_MAX_GPUS = 65536
XDR = "../../../topologies/dgx-h100-xdr.yaml"  # relative to the scenario, as its own topology reference


def fabric_of(gpus: int, fabric: str) -> str:
    """``ndr`` (the scenario's ``dgx-h100``) or ``xdr`` (``dgx-h100-xdr``) for ``gpus`` under ``--fabric``."""
    if fabric == "auto":
        return "ndr" if gpus <= NDR_MAX_GPUS else "xdr"
    return fabric


def overrides(gpus: int, fabric: str = "ndr") -> list[str]:
    """The scenario's overrides at ``gpus`` GPUs on ``fabric``."""
    pp = 16 if gpus >= 128 else 8
    dp = gpus // (8 * pp)
    topology = [f"cluster.topology={XDR}"] if fabric == "xdr" else []
    return [f"cluster.nodes={gpus // 8}", f"parallelism.pp={pp}", f"parallelism.virtual_stages={128 // pp}",
            f"training.global_batch={MICRO_BATCHES * dp}"] + topology  # fmt: skip


def bench(gpus: int, repeat: int, fabric: str = "ndr") -> dict[str, float]:
    """Best wall and CPU seconds of ``repeat`` runs, with what was simulated."""
    scenario = load_scenario(SCENARIO, overrides(gpus, fabric))
    best_wall = best_cpu = float("inf")
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        report = simulate(scenario).report
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return {"gpus": gpus, "ranks": report.simulated_ranks, "events": report.events, "step": report.step_time_s,
            "wall": best_wall, "cpu": best_cpu, "load": os.getloadavg()[0]}  # fmt: skip


def read_table(path: Path) -> list[dict[str, float]]:
    """GPUs and wall/CPU seconds of a table this script printed (an earlier run, to draw beside this one)."""
    rows = []
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0].replace(",", "").isdigit():
            rows.append({"gpus": int(cells[0].replace(",", "")), "wall": float(cells[5].split()[0]),
                         "cpu": float(cells[6].split()[0])})  # fmt: skip
    return rows


def chart(rows: list[dict[str, float]], path: Path, before: list[dict[str, float]] | None = None) -> None:
    """Wall and CPU seconds against GPUs, log-log, in the house style (points past the NDR fabric hollow;
    ``before``: an earlier run's CPU seconds, in grey)."""
    from simulator.report.style import new_figure, save_figure

    fig = new_figure(6.4, 3.6)
    ax = fig.add_subplot()
    if before:
        ax.plot([r["gpus"] for r in before], [r["cpu"] for r in before], marker=".", color="grey",
                linestyle=":", label="CPU before (earlier run)")  # fmt: skip
    gpus = [r["gpus"] for r in rows]
    wall = ax.plot(gpus, [r["wall"] for r in rows], marker="o", label="wall")[0]
    cpu = ax.plot(gpus, [r["cpu"] for r in rows], marker="s", linestyle="--", label="CPU (user + system)")[0]
    xdr = [r for r in rows if r["gpus"] > NDR_MAX_GPUS]
    for line, key in ((wall, "wall"), (cpu, "cpu")):
        ax.plot([r["gpus"] for r in xdr], [r[key] for r in xdr], marker=line.get_marker(), linestyle="none",
                color="white", markeredgecolor=line.get_color(), zorder=3)  # fmt: skip
    if xdr:
        ax.axvline(NDR_MAX_GPUS, color="grey", linewidth=0.8, alpha=0.6)
        ax.text(
            NDR_MAX_GPUS * 1.05,
            0.04,
            "XDR\nfabric",
            fontsize=7,
            color="grey",
            transform=ax.get_xaxis_transform(),
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("GPUs (Llama 3 405B, TP 8, PP 16, flow network, 3-tier fat-tree)")
    ax.set_ylabel("seconds per simulated step")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save_figure(fig, path)


def main() -> None:
    """Run and print a Markdown table (and the chart when asked)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--gpus", default=",".join(map(str, GPUS)))
    ap.add_argument("--fabric", choices=("auto", "ndr", "xdr"), default="auto")
    ap.add_argument("--chart", type=Path)
    ap.add_argument(
        "--before", type=Path, help="a table printed by an earlier run, drawn in grey on the chart"
    )
    args = ap.parse_args()
    rows = []
    print("| GPUs | fabric | simulated ranks | events | simulated step | wall | CPU | load average |")
    print("|---|---|---|---|---|---|---|---|")
    for g in (int(x) for x in args.gpus.split(",")):
        fabric = fabric_of(g, args.fabric)
        r = bench(g, args.repeat, fabric)
        rows.append(r)
        print(f"| {g:,} | {fabric.upper()} | {r['ranks']} | {r['events']:,} | {r['step']:.4f} s | {r['wall']:.2f} s "
              f"| {r['cpu']:.2f} s | {r['load']:.1f} |", flush=True)  # fmt: skip
    if args.chart:
        chart(rows, args.chart, read_table(args.before) if args.before else None)


if __name__ == "__main__":
    main()
