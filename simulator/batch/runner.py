"""Batch runs: load the points, look them up in the store, run the missing ones, write the table.

``run_batch`` validates the whole source first (a bad sweep, or any point whose cluster is malformed,
fails before any point runs), stores every result as soon as it arrives (so an interrupted batch resumes
where it stopped), and derives ``results.csv`` and ``reports/<label>.json`` from the store at the end,
each written atomically. Batches sharing one output folder claim points in the store and wait for what
the others are computing (``ResultStore.claim``), so each point is simulated once.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import os
import pickle
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from simulator.batch.executors.base import Done, ExecutorOptions, make_executor
from simulator.batch.store import CACHED_STATUSES, PointOutcome, ResultStore, StoredResult, now_iso, point_key
from simulator.batch.sweep import Point, load_points
from simulator.errors import ScenarioError, UserInputError
from simulator.report.schema import KernelClasses, StepReport
from simulator.scenario import Scenario
from simulator.topology.loader import check_topology

SimulateFn = Callable[[Scenario], StepReport]
CheckFn = Callable[[Point], None]
CSV_FILE = "results.csv"
REPORTS_DIR = "reports"
POLL_S = 0.5  # how often a batch looks at the store for the points another batch is computing


def simulate_report(scenario: Scenario) -> StepReport:
    """The default simulate function of a batch: the engine's report of one step of ``scenario``."""
    from simulator.simulate import simulate

    return simulate(scenario).report


def run_point(simulate_fn: SimulateFn, scenario: Scenario) -> PointOutcome:
    """Simulate one point in a worker; an infeasible or failing point becomes an outcome, not an exception."""
    start = time.perf_counter()
    try:
        report = simulate_fn(scenario)
    except UserInputError as e:
        # The input's fault, found only while simulating: as deterministic as the result, so it is stored
        # for good (not retried as "a point failed (a bug)" on every re-run).
        return PointOutcome("infeasible", None, e.one_line(), wall_s=time.perf_counter() - start)
    except Exception as e:
        detail = traceback.format_exc()
        return PointOutcome("error", None, _one_line(e), detail, time.perf_counter() - start)
    return PointOutcome("ok", report.model_dump_json(indent=2), wall_s=time.perf_counter() - start)


def _one_line(e: BaseException) -> str:
    return " ".join(f"{e.__class__.__name__}: {e}".split())


@dataclass(frozen=True)
class BatchResult:
    """What a batch did: point counts (every point of the source is exactly one of ok, infeasible,
    failed; and one of ran, cached), wall time, and where the outputs are."""

    total: int
    ran: int
    cached: int
    ok: int
    infeasible: int
    failed: int
    wall_s: float
    out_dir: Path
    csv_path: Path
    store_path: Path


def run_batch(
    source: Path,
    out_dir: Path,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    force: bool = False,
    progress: bool = True,
    simulate_fn: SimulateFn = simulate_report,
    check_fn: CheckFn | None = None,
) -> BatchResult:
    """Run every point of ``source`` (a sweep file, scenario file or folder) not yet in ``out_dir``'s store.

    ``workers`` local processes (default: CPU count), or the Dask cluster at ``scheduler``; ``force``
    recomputes stored points. Every point is first checked by ``check_fn`` (default: ``check_point``
    with the engine's simulate function; none with another, which brings its own idea of a cluster).
    Writes ``results.csv`` and ``reports/<label>.json`` from the store.
    """
    start = time.perf_counter()
    since = now_iso()
    _check_picklable(simulate_fn)
    points = load_points(Path(source))
    check = check_fn if check_fn is not None else (check_point if simulate_fn is simulate_report else None)
    if check is not None:
        for point in points:
            check(point)
    keys = [point_key(p.scenario) for p in points]
    copies = Counter(keys)
    with ResultStore.open(Path(out_dir)) as store:
        todo = _pending(keys, set() if force else store.done_keys())
        options = ExecutorOptions(workers=workers or os.cpu_count() or 1, scheduler=scheduler)
        with BatchProgress(len(points), len(points) - sum(copies[k] for k in todo), enabled=progress) as bar:
            computed = _execute(
                points, keys, todo, store, simulate_fn, options, bar, since=since, force=force
            )
        ran = sum(copies[k] for k in computed)
        results = store.get_many(keys)
        store_path = store.path
    csv_path = write_outputs(Path(out_dir), points, keys, results)
    status = Counter(results[k].status for k in keys)
    return BatchResult(
        *(len(points), ran, len(points) - ran, status["ok"], status["infeasible"], status["error"]),
        *(time.perf_counter() - start, Path(out_dir), csv_path, store_path),
    )


def check_point(point: Point) -> None:
    """Check a point's cluster (its topology document, overrides applied) without building its graph, so
    that ``cluster.overrides.colour: [red]`` fails the batch up front, naming the file and the point."""
    topology = point.scenario.topology
    token = json.dumps(topology, sort_keys=True, default=str)
    if token in _CHECKED:
        return
    try:
        check_topology(copy.deepcopy(topology), file=point.scenario.topology_file)
    except ScenarioError as e:
        values = ", ".join(f"{a}={v!r}" for a, v in point.swept.items()) or point.label
        field = ", ".join(point.swept) or None
        raise ScenarioError(
            f"point {values}: {e.one_line()}", file=point.file or point.scenario.file, field=field
        ) from None
    if len(_CHECKED) < _CHECKED_MAX:
        _CHECKED.add(token)


_CHECKED: set[str] = set()  # topology documents already checked (points of a sweep share a few)
_CHECKED_MAX = 10_000


def _check_picklable(fn: SimulateFn) -> None:
    try:
        pickle.dumps(fn)
    except Exception as e:
        raise TypeError(
            f"simulate_fn must be a picklable module-level function ({e.__class__.__name__}: {e})"
        ) from e


def _pending(keys: list[str], done: set[str]) -> dict[str, int]:
    """Key → index of its first point, for the keys to run (a scenario listed twice runs once)."""
    todo: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key not in done and key not in todo:
            todo[key] = i
    return todo


def _execute(
    points: list[Point],
    keys: list[str],
    todo: dict[str, int],
    store: ResultStore,
    simulate_fn: SimulateFn,
    options: ExecutorOptions,
    bar: BatchProgress,
    *,
    since: str,
    force: bool,
) -> set[str]:
    """Run the pending points this batch can claim, storing each outcome as it arrives; wait for those
    another batch on the same store is computing (taking over any whose batch died). Returns the keys
    this batch computed."""
    if not todo:
        return set()
    executor = make_executor("dask" if options.scheduler else "local", options)
    copies = Counter(keys)
    waiting = dict(todo)
    computed: set[str] = set()
    try:
        while waiting:
            mine = store.claim(waiting, since=since, force=force)
            if mine:
                ours = {k: waiting.pop(k) for k in list(waiting) if k in mine}
                _run_claimed(points, keys, list(ours.values()), store, simulate_fn, executor, bar)
                computed |= ours.keys()
            for key, row in store.get_many(waiting).items():  # what the other batches finished
                if (row.status in CACHED_STATUSES and not force) or row.created >= since:
                    bar.advance(row.status, copies[key])
                    del waiting[key]
            if waiting and not mine:
                time.sleep(POLL_S)
    finally:
        store.release(todo)  # claims left on an interrupt: free at once (a killed batch's go stale)
    return computed


def _run_claimed(
    points: list[Point],
    keys: list[str],
    order: list[int],
    store: ResultStore,
    simulate_fn: SimulateFn,
    executor: Any,
    bar: BatchProgress,
) -> None:
    copies = Counter(keys)
    task = partial(run_point, simulate_fn)
    with closing(executor.run(task, [points[i].scenario for i in order])) as results:
        for done in results:
            i = order[done.index]
            outcome = _outcome(done)
            store.put(
                keys[i],
                points[i].scenario.content_hash(),
                outcome,
                label=points[i].label,
                swept=points[i].swept,
            )
            bar.advance(outcome.status, copies[keys[i]])


def _outcome(done: Done[PointOutcome]) -> PointOutcome:
    """The stored outcome of a finished task; an interrupt is re-raised, a crashed worker is an error."""
    if done.error is None and done.value is not None:
        return done.value
    if done.error is not None and not isinstance(done.error, Exception):
        raise done.error
    detail = "".join(traceback.format_exception(done.error)) if done.error else ""
    return PointOutcome("error", None, _one_line(done.error) if done.error else "no result", detail)


class BatchProgress:
    """A rich progress bar on stderr: points done, ok / infeasible / failed counts, ETA.

    Does nothing when disabled or when stderr is not a terminal.
    """

    def __init__(self, total: int, cached: int, *, enabled: bool) -> None:
        self._counts = Counter({"ok": 0, "infeasible": 0, "error": 0})
        self._cached = cached
        console = Console(stderr=True)
        self._progress: Progress | None = None
        if enabled and console.is_terminal:
            columns = (
                TextColumn("batch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"),
            )
            self._progress = Progress(*columns, TextColumn("ETA"), TimeRemainingColumn(), console=console)
        self._task: TaskID | None = None
        self._total = total

    def __enter__(self) -> BatchProgress:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(
                "batch", total=self._total, completed=self._cached, counts=self._text()
            )
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self, status: str, n: int = 1) -> None:
        """Count ``n`` finished points with this status."""
        self._counts[status] += n
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=n, counts=self._text())

    def _text(self) -> str:
        c = self._counts
        return f"{self._cached} cached · {c['ok']} ok · {c['infeasible']} infeasible · {c['error']} failed"


# ------------------------------------------------------------------------------------------------ outputs
METRIC_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("scenario", ("scenario",)),
    ("gpus", ("gpus",)),
    ("step_time_s", ("step_time_s",)),
    ("tokens_per_s", ("tokens_per_s",)),
    ("samples_per_s", ("samples_per_s",)),
    ("model_tflops_per_gpu", ("model_tflops_per_gpu",)),
    ("mfu", ("mfu",)),
    ("hfu", ("hfu",)),
    # what the step and the run cost (issue #10); empty cells where unknown or stored before them
    *((k, (k,)) for k in ("usd_per_million_tokens", "days", "usd")),
    *((f"breakdown.{k}", ("breakdown", k)) for k in ("compute_s", "exposed_comm_s", "overlapped_comm_s")),
    *((f"breakdown.{k}", ("breakdown", k)) for k in ("bubble_s", "other_s")),
    *((f"comm.{k}", ("comm", k)) for k in ("tp_s", "dp_s", "pp_s", "ep_s", "cp_s")),
    # where the time goes per kind of kernel (issue #8); empty cells for reports stored before it
    *((f"kernel_classes.{k}", ("kernel_classes", k)) for k in KernelClasses.model_fields),
    ("memory_gib_per_gpu.total", ("memory_gib_per_gpu", "total")),
    ("fits_memory", ("fits_memory",)),
)


def write_outputs(
    out_dir: Path, points: list[Point], keys: list[str], results: dict[str, StoredResult]
) -> Path:
    """Write ``results.csv`` (one row per point) and ``reports/<label>.json`` (ok points), atomically."""
    reports = out_dir / REPORTS_DIR
    reports.mkdir(parents=True, exist_ok=True)
    for point, key in zip(points, keys, strict=True):
        row = results[key]
        if row.report_json is not None:
            _write_if_changed(reports / f"{point.label}.json", row.report_json + "\n")
    csv_path = out_dir / CSV_FILE
    _write_if_changed(csv_path, results_csv(points, keys, results), fsync=True)
    return csv_path


def _write_if_changed(path: Path, text: str, *, fsync: bool = False) -> None:
    """``atomic_write_text`` unless the file already holds ``text`` (a re-run from the store writes nothing)."""
    try:
        if path.read_text(encoding="utf-8") == text:
            return
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    atomic_write_text(path, text, fsync=fsync)


def results_csv(points: list[Point], keys: list[str], results: dict[str, StoredResult]) -> str:
    """The batch table: label, status, reason, one column per swept axis, headline metrics, store key."""
    axes = list(dict.fromkeys(axis for p in points for axis in p.swept))
    header = ["label", "status", "reason", *axes, *(name for name, _ in METRIC_COLUMNS), "key"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for point, key in zip(points, keys, strict=True):
        row = results[key]
        report = json.loads(row.report_json) if row.report_json else {}
        metrics = [_cell(_dig(report, path)) for _, path in METRIC_COLUMNS]
        swept = [_cell(point.swept[a]) if a in point.swept else "" for a in axes]
        writer.writerow([point.label, row.status, row.reason, *swept, *metrics, key])
    return buf.getvalue()


def _dig(doc: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = doc
    for part in path:
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _cell(value: Any) -> str:
    """A CSV cell: strings as they are, numbers and booleans as JSON, nothing as empty."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(value, sort_keys=True)


def atomic_write_text(path: Path, text: str, *, fsync: bool = False) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: never half-written."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
