"""The ``clustersim`` command line: run, batch, compare, collective, validate, search, plan.

Every command explains itself with ``--help``. A mistake in the user's input prints one line naming the
file, the field and what is wrong, and exits with status 2; no traceback. Internal errors (bugs) keep theirs.
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from simulator import __version__
from simulator.batch.executors.base import WorkersLost
from simulator.errors import InternalError, UserInputError, one_line_text, shorten

EXIT_USER_ERROR = 2
# A result that breaks one of clustersim's invariants (simulator/report/invariants.py): a bug to report,
# kept apart from the user's mistakes (2) and from validate's "outside tolerance" (1).
EXIT_INTERNAL_ERROR = 3

Handler = Callable[[argparse.Namespace], int]


def _lazy(module: str, function: str) -> Handler:
    """A handler that imports its command module only when that command runs (``--help`` stays fast)."""

    def handler(args: argparse.Namespace) -> int:
        return int(getattr(importlib.import_module(module), function)(args))

    return handler


def _add_run(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "run",
        help="simulate one training step of a scenario",
        description="Simulate one optimizer step of a scenario and report step time, throughput, MFU, "
        "where the time goes (compute, exposed and hidden communication, pipeline bubble) and memory per GPU.",
        epilog="example: clustersim run scenarios/quickstart.yaml --set parallelism.tp=4 --json",
    )
    p.add_argument("scenario", type=Path, help="scenario YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. --set parallelism.tp=4 (repeatable)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print exactly one JSON report object to stdout")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write report.json and charts (breakdown, memory, links) into DIR")  # fmt: skip
    p.add_argument(
        "--trace", type=Path, metavar="FILE", help="write a Perfetto/Chrome trace (open in ui.perfetto.dev)"
    )
    p.add_argument(
        "--timeline", type=Path, metavar="FILE", help="write a Gantt chart of the step (PNG or SVG)"
    )
    p.add_argument(
        "--full", action="store_true", help="simulate every rank instead of one per symmetry class"
    )
    p.add_argument("--dry-run", action="store_true",
                   help="print what the step would simulate (ranks, ops, flows, graph memory) and stop; "
                   "a step past the engine's limit is refused (exit 2)")  # fmt: skip
    p.set_defaults(handler=_lazy("simulator.commands.run", "run_command"))


def _add_validate(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "validate",
        help="compare predictions with published measured runs",
        description="Simulate every published run shipped with clustersim (Megatron-LM SC'21 on A100, "
        "Megatron-Core on H100, held-out runs, runs on current stacks) and print predicted vs measured step "
        "time, whether the predicted memory fits, and median/max error per class. Exits 1 when a row is "
        "outside its tolerance, does not fit in memory, or does not run.",
    )
    p.add_argument("--suite", action="append", default=[], metavar="NAME",
                   help="only this suite (repeatable): megatron-2021-a100, korthikanti-2022-layer, "
                   "korthikanti-2022-e2e-a100, mtnlg-530b-a100, bloom-176b-a100, megatron-readme-h100, "
                   "llama3-405b-h100, modern-training-runs, heldout-training-runs, nccl-busbw; default: every suite")  # fmt: skip
    p.add_argument("--class", dest="cls", action="append", default=[], metavar="CLASS",
                   help="only step-time rows of this class (repeatable): dense-bf16, dense-fp8, long-context, moe, "
                   "gpu:<type> (e.g. gpu:b200) or framework:<name> (e.g. framework:torchtitan)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    p.add_argument(
        "--workers", type=_positive_int, default=1, help="processes to run rows in parallel (default 1)"
    )
    p.set_defaults(handler=_lazy("simulator.validation.command", "validate_command"))


def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:  # also a number of more than 4,300 digits
        raise argparse.ArgumentTypeError(f"{shorten(text)} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _positive_float(text: str) -> float:
    """An argparse type: a finite number above 0 (``inf`` and ``nan`` parse as floats; refuse them)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shorten(text)} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{value} is not a finite positive number")
    return value


def _add_batch(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "batch",
        help="run every point of a sweep, scenario file or folder, with a results store",
        description="Run every point of a sweep file (a base scenario plus axes of overrides), a scenario "
        "file or a folder of them, on local processes or a Dask cluster. Results are stored in DIR/results.sqlite "
        "as they arrive, so a re-run skips what is done and an interrupted batch resumes; DIR/results.csv "
        "gathers the headline metrics and DIR/reports/ every point's JSON report. Infeasible points are "
        "recorded with their reason. Exit status: 0, 1 when a point failed (a bug), 2 on a bad sweep, 130 on Ctrl-C.",
        epilog="example: clustersim batch scenarios/compare/sweeps/clusters.yaml --out out/clusters --workers 2 "
        "(sweep file format: docs/batch.md)",
    )
    p.add_argument(
        "source", type=Path, metavar="SWEEP_OR_DIR", help="sweep file, scenario file or folder of them"
    )
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="output folder (store, CSV, reports)"
    )
    p.add_argument(
        "--workers", type=_positive_int, metavar="N", help="local worker processes (default: one per CPU)"
    )
    p.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                   help="run on this Dask distributed scheduler instead of local processes")  # fmt: skip
    p.add_argument("--force", action="store_true", help="recompute points already in the store")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (it only shows on a terminal)")
    p.set_defaults(handler=_lazy("simulator.commands.batch", "batch_command"))


def _add_compare(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "compare",
        help="comparison charts and report.html from batch results or JSON reports",
        description="Draw comparison charts (step-time breakdown, throughput and MFU, scaling with GPU count, "
        "memory per GPU, a heat-map over two swept axes) as PNG and SVG, and a self-contained report.html "
        "with a sortable table, from batch output folders (clustersim batch --out), run --out folders or "
        "JSON files written by run --json.",
        epilog="example: clustersim compare out/tp-pp --out out/tp-pp/charts --x parallelism.tp "
        "--y parallelism.pp --metric tokens_per_s",
    )
    p.add_argument("inputs", nargs="+", type=Path, metavar="RESULTS_DIR_OR_JSON",
                   help="batch output folder, run --out folder, folder of JSON reports, or JSON report file")  # fmt: skip
    p.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="folder for the charts and report.html"
    )
    p.add_argument(
        "--x", metavar="AXIS", help="heat-map x axis: a swept axis (parallelism.tp) or a column (tp)"
    )
    p.add_argument("--y", metavar="AXIS", help="heat-map y axis (with --x)")
    p.add_argument("--metric", default="mfu", metavar="METRIC",
                   help="heat-map value: mfu (default), tokens_per_s, step_time_s, memory_gib_per_gpu.total ...")  # fmt: skip
    p.add_argument("--format", default="png,svg", metavar="png,svg", help="chart formats (default: png,svg)")
    p.add_argument("--width", type=_positive_float, default=12.0, metavar="INCHES",
                   help="width of the bar and scaling charts (default 12; 8 reads well in a README)")  # fmt: skip
    p.add_argument("--title", default="clustersim comparison", help="title of report.html")
    p.set_defaults(handler=_lazy("simulator.commands.compare", "compare_command"))


def _add_collective(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "collective",
        help="nccl-tests-like bandwidth table of one collective on a simulated fabric",
        description="Time one collective over a doubling range of message sizes on a cluster's simulated "
        "fabric and print nccl-tests' columns: size, time, algbw = size/time and busbw (algbw x 2(n-1)/n "
        "for all_reduce, x (n-1)/n for reduce_scatter, all_gather and all_to_all, x 1 for broadcast and "
        "send_recv), with the algorithm used at each size.",
        epilog="example: clustersim collective --cluster topologies/dgx-h100.yaml --nodes 2 --op all_reduce "
        "--sizes 1M:8G --algorithm auto",
    )
    p.add_argument("--cluster", required=True, metavar="TOPOLOGY",
                   help="topology file, or the name of a shipped one (dgx-h100)")  # fmt: skip
    p.add_argument("--nodes", type=int, metavar="N", help="hosts (default: the topology's nodes)")
    p.add_argument("--op", default="all_reduce", metavar="OP",
                   help="all_reduce (default), all_gather, reduce_scatter, all_to_all, broadcast, send_recv")  # fmt: skip
    p.add_argument("--sizes", default="1M:8G", metavar="START:END",
                   help="message sizes, doubling from START to END; K, M, G = 2^10, 2^20, 2^30 bytes (default 1M:8G)")  # fmt: skip
    p.add_argument("--algorithm", default="auto", metavar="NAME",
                   help="auto (NCCL-like choice per size, default), ring, tree, nvls, halving_doubling, "
                   "hierarchical, direct, p2p")  # fmt: skip
    p.add_argument("--network", default="flow", metavar="MODEL", help="flow (default) or analytical")
    p.add_argument("--gpus", type=int, metavar="N",
                   help="GPUs in the group, spread evenly over the hosts (default: every GPU)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    p.set_defaults(handler=_lazy("simulator.commands.collective", "collective_command"))


def _add_search(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from simulator.planning import OBJECTIVES

    p = sub.add_parser(
        "search",
        help="best feasible parallel layouts of a scenario's model on its cluster",
        description="Search the parallel layouts (tp, pp, micro-batch, schedule, ZeRO, sequence parallelism, "
        "recomputation; dp derived) of a scenario's model on its cluster: prune what cannot split, cannot run, "
        "does not fit in memory or is dominated, simulate the rest on the analytical network model, re-simulate "
        "the best with the scenario's own network model and print them ranked, with the points tried, pruned "
        "and infeasible.",
        epilog="example: clustersim search scenarios/quickstart.yaml --top 5 --out out/search "
        "(details: docs/search-and-plan.md)",
    )
    p.add_argument("scenario", type=Path, help="scenario YAML file (its model, cluster and batch are kept)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key before searching (repeatable)")  # fmt: skip
    p.add_argument("--top", type=_positive_int, default=10, metavar="N", help="layouts to show (default 10)")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="local worker processes (default: one per CPU; 1 runs in this process)")  # fmt: skip
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="write results.csv, pruned.csv (every other point and why) and best.yaml into DIR")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the search as one JSON object")
    p.add_argument("--max-points", type=_positive_int, default=200, metavar="N",
                   help="simulate at most N layouts, the likeliest first (default 200)")  # fmt: skip
    p.add_argument("--objective", choices=OBJECTIVES, default=OBJECTIVES[0],
                   help="rank by throughput (default) or by $ per million tokens at the scenario's cost.usd_per_gpu_hour")  # fmt: skip

    p.set_defaults(handler=_lazy("simulator.commands.search", "search_command"))


def _add_plan(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from simulator.planning.reliability import RESTART_MINUTES, STORAGE_GBPS_PER_NODE
    from simulator.planning.scaling import ASSUMED_MFU, FITS, parse_quantity

    def quantity(text: str) -> float:
        try:
            return parse_quantity(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a positive number (e.g. 1e24, 15T, 2.5M)"
            ) from None

    def fraction(text: str) -> float:
        value = _positive_float(text)
        if value > 1:
            raise argparse.ArgumentTypeError(f"{value} is not a fraction in (0, 1]")
        return value

    p = sub.add_parser(
        "plan",
        help="compute-optimal model and data for a budget; time and cost to train",
        description="Plan a training run: Chinchilla's loss-optimal parameters and tokens for a compute budget "
        "(and the ~20 tokens/parameter split), and for a model on a cluster the training time, GPU-hours, "
        "dollars, energy, CO2, expected interruptions and checkpoint overhead, from one simulated step of the "
        "scenario's layout or of the best layout a quick search finds.",
        epilog="examples: clustersim plan --budget-flops 5.76e23 · clustersim plan --model llama3-8b --tokens 15T "
        "--cluster dgx-h100 --nodes 64 · clustersim plan --model scenarios/quickstart.yaml --budget-gpu-hours 1e5 "
        "(details: docs/search-and-plan.md)",
    )
    p.add_argument("--model", metavar="MODEL_OR_SCENARIO",
                   help="a catalog model (llama3-8b) or a scenario file (its model, cluster and layout)")  # fmt: skip
    p.add_argument("--scenario", type=Path, metavar="S",
                   help="take the layout (and batch, cluster) from this scenario; --model replaces its model")  # fmt: skip
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument(
        "--budget-flops", type=quantity, metavar="F", help="compute budget in FLOPs (C = 6·N·D)"
    )
    budget.add_argument(
        "--budget-gpu-hours", type=quantity, metavar="H", help="budget in GPU-hours (needs a cluster)"
    )
    budget.add_argument(
        "--tokens", type=quantity, metavar="D", help="tokens to train on (needs a model and a cluster)"
    )
    p.add_argument("--cluster", metavar="TOPOLOGY", help="topology file or shipped topology name (dgx-h100)")
    p.add_argument("--nodes", type=_positive_int, metavar="N", help="hosts of the cluster")
    p.add_argument("--usd-per-gpu-hour", type=_positive_float, metavar="P",
                   help="price (default: the scenario's cost.usd_per_gpu_hour, 2.5 unless set)")  # fmt: skip
    p.add_argument("--fit", choices=sorted(FITS), default="hoffmann",
                   help="Chinchilla loss fit: hoffmann (2022, as published; default) or epoch (Besiroglu 2024 refit)")  # fmt: skip
    p.add_argument("--mfu", type=fraction, metavar="F",
                   help=f"MFU for a GPU-hour budget without a model (default {ASSUMED_MFU}, Llama 3 405B's 38-43%%)")  # fmt: skip
    p.add_argument("--storage-gbps-per-node", type=_positive_float, default=STORAGE_GBPS_PER_NODE, metavar="GB/s",
                   help=f"checkpoint write bandwidth per node (default {STORAGE_GBPS_PER_NODE}: Llama 3's 2 TB/s over 2,048 nodes)")  # fmt: skip
    p.add_argument("--restart-minutes", type=_positive_float, default=RESTART_MINUTES, metavar="MIN",
                   help=f"time to restart after a failure, before reading the checkpoint (default {RESTART_MINUTES:g}, an assumption)")  # fmt: skip
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a scenario key, e.g. training.seq_len=8192 (repeatable)")  # fmt: skip
    p.add_argument(
        "--workers",
        type=_positive_int,
        metavar="N",
        help="processes for the quick search (default: one per CPU)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")

    p.set_defaults(handler=_lazy("simulator.commands.plan", "plan_command"))


COMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (  # type: ignore[type-arg]
    _add_run,
    _add_batch,
    _add_compare,
    _add_collective,
    _add_validate,
    _add_search,
    _add_plan,
)


class _Parser(argparse.ArgumentParser):
    """An argument parser whose mistakes are one line, like every other user error (exit 2)."""

    def error(self, message: str) -> NoReturn:
        hint = f"; see {self.prog} --help"
        self.exit(EXIT_USER_ERROR, f"clustersim: error: {self.prog}: {one_line_text(message)}{hint}\n")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = _Parser(
        prog="clustersim",
        description="Simulate distributed LLM training on GPU clusters: step time, throughput, MFU, "
        "communication, pipeline bubbles and memory, from a YAML scenario.",
    )
    parser.add_argument("--version", action="version", version=f"clustersim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clustersim`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except UserInputError as e:
        if e.file is None and getattr(args, "scenario", None) is not None:
            e.file = str(args.scenario)  # raised while simulating: name the scenario it came from
        print(f"clustersim: error: {e.one_line()}", file=sys.stderr)
        return EXIT_USER_ERROR
    except InternalError as e:
        print(f"clustersim: internal error (a bug, please report it with the scenario): {e}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    # A worker pool lost its workers (killed for memory, a native crash): one line, never a traceback (issue
    # #10, point 3). search reruns what was lost in this process and batch keeps what is stored; this is the
    # net for any other command that meets it.
    except WorkersLost as e:
        print(
            f"clustersim: error: {one_line_text(str(e)).rstrip('.')}; try again, or with --workers 1",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR
    except KeyboardInterrupt:
        print("clustersim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
