"""``clustersim batch``: run every point of a sweep file, scenario file or folder, and summarise the batch.

The work is ``simulator.batch.runner.run_batch`` (see docs/batch.md); this module prints what it did:
point counts, a few infeasibility and failure reasons, wall time and where ``results.csv`` is. Exit
status: 0 when every point is ``ok`` or ``infeasible``, 1 when a point failed (an internal error, kept
with its traceback in the store) or the workers were lost, 130 on Ctrl-C (what is stored is kept).
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import Counter
from pathlib import Path
from typing import TextIO

from simulator.batch.executors.base import WorkersLost
from simulator.batch.runner import BatchResult, run_batch
from simulator.batch.store import STORE_FILE, ResultStore, point_key
from simulator.batch.sweep import load_points
from simulator.files import check_output_dir

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
MAX_REASONS = 3  # distinct reasons listed per status in the summary


def batch_command(args: argparse.Namespace) -> int:
    """Run the batch ``args.source`` into ``args.out`` and print its summary; returns the exit status."""
    source, out_dir = Path(args.source), Path(args.out)
    check_output_dir(out_dir, "--out")  # before the points are resolved and checked
    try:
        result = run_batch(
            source,
            out_dir,
            workers=args.workers,
            scheduler=args.scheduler,
            force=args.force,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        stored = stored_points(source, out_dir)
        print(f"interrupted: {stored} points stored; re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except WorkersLost as e:
        stored = stored_points(source, out_dir)
        print(f"clustersim: error: {e}; {stored} points stored; re-run to resume", file=sys.stderr)
        return EXIT_FAILED
    print_summary(result, sys.stdout)
    return EXIT_FAILED if result.failed else 0


def stored_points(source: Path, out_dir: Path) -> int:
    """How many points of ``source`` have a final result (ok or infeasible) in ``out_dir``'s store."""
    if not (out_dir / STORE_FILE).is_file():
        return 0
    keys = [point_key(p.scenario) for p in load_points(source)]
    with ResultStore.open(out_dir) as store:
        done = store.done_keys()
    return sum(key in done for key in keys)


def print_summary(result: BatchResult, out: TextIO) -> None:
    """A few lines: point counts, the commonest infeasibility and failure reasons, wall time, outputs."""
    out.write(
        f"{result.total} points: {result.ran} ran, {result.cached} cached · {result.ok} ok, "
        f"{result.infeasible} infeasible, {result.failed} failed · {result.wall_s:.1f} s wall\n"
    )
    reasons = reasons_by_status(result.csv_path)
    for status, title in (("infeasible", "infeasible"), ("error", "failed")):
        for reason, count in reasons.get(status, Counter()).most_common(MAX_REASONS):
            out.write(f"  {title} ×{count}: {reason}\n")
        hidden = len(reasons.get(status, ())) - MAX_REASONS
        if hidden > 0:
            other = "another reason" if hidden == 1 else f"{hidden} other reasons"
            out.write(f"  … {title} for {other} (see results.csv)\n")
    if result.failed:
        out.write(f"  failed points keep their traceback in {result.store_path} (column detail)\n")
    out.write(f"results: {result.csv_path}\n")


def reasons_by_status(csv_path: Path) -> dict[str, Counter[str]]:
    """Status → reason → number of points, from a batch's ``results.csv`` (``ok`` rows are skipped)."""
    reasons: dict[str, Counter[str]] = {}
    with csv_path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            if row["status"] != "ok":
                reasons.setdefault(row["status"], Counter())[row["reason"] or "(no reason)"] += 1
    return reasons
