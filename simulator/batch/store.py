"""The results store: one SQLite file in the batch's output folder, the single source of truth of a batch.

One row per point, keyed by sha256 of the resolved scenario's ``content_hash()`` and the simulator
version. Every result is written in its own transaction (WAL journal), so a killed batch loses at most the
points that were in flight, and the primary key means a point is never stored twice. ``results.csv`` and
``reports/`` are derived from this file.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import simulator
from simulator.errors import UserInputError
from simulator.report.schema import StepReport
from simulator.scenario import Scenario

STORE_FILE = "results.sqlite"
SCHEMA_VERSION = 1
Status = Literal["ok", "infeasible", "error"]
CACHED_STATUSES: tuple[Status, ...] = ("ok", "infeasible")  # "error" rows are retried by the next run

_SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key        TEXT PRIMARY KEY,
    status     TEXT NOT NULL CHECK (status IN ('ok', 'infeasible', 'error')),
    report     TEXT,             -- StepReport JSON when status = 'ok'
    reason     TEXT NOT NULL,    -- why the point did not run ('' when ok)
    detail     TEXT NOT NULL,    -- traceback of an unexpected error
    swept      TEXT NOT NULL,    -- JSON: axis -> value of the point that computed this row
    label      TEXT NOT NULL,
    scenario   TEXT NOT NULL,    -- Scenario.content_hash()
    version    TEXT NOT NULL,    -- simulator.__version__
    sim_wall_s REAL NOT NULL,    -- seconds the simulation took
    created    TEXT NOT NULL     -- ISO 8601, UTC
)
"""
_COLUMNS = "key, status, report, reason, detail, swept, label, scenario, version, sim_wall_s, created"
_IN_CHUNK = 500  # keys per SELECT ... IN (...)


def point_key(scenario: Scenario, version: str = simulator.__version__) -> str:
    """The store key of a scenario: sha256 of its content hash and the simulator version."""
    return hashlib.sha256(f"{scenario.content_hash()}:{version}".encode()).hexdigest()


@dataclass(frozen=True)
class PointOutcome:
    """What running one point produced: a report (``ok``) or the reason it did not run."""

    status: Status
    report_json: str | None
    reason: str = ""
    detail: str = ""
    wall_s: float = 0.0


@dataclass(frozen=True)
class StoredResult:
    """One row of the store."""

    key: str
    status: Status
    report_json: str | None
    reason: str
    detail: str
    swept: dict[str, Any]
    label: str
    scenario_hash: str
    version: str
    sim_wall_s: float
    created: str

    def report(self) -> StepReport | None:
        """The parsed report of an ``ok`` row, None otherwise."""
        return StepReport.model_validate_json(self.report_json) if self.report_json else None


class ResultStore:
    """The SQLite results store of one output folder (use ``ResultStore.open``; close it when done)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    def open(cls, out_dir: Path) -> ResultStore:
        """Open (creating if needed) ``out_dir/results.sqlite`` in WAL mode."""
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / STORE_FILE
        conn = sqlite3.connect(path, timeout=30.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            _migrate(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(conn, path)

    def close(self) -> None:
        """Close the connection (every write is already committed)."""
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def done_keys(self) -> set[str]:
        """Keys whose result is final (``ok`` or ``infeasible``); ``error`` rows are retried."""
        marks = ", ".join("?" * len(CACHED_STATUSES))
        rows = self._conn.execute(f"SELECT key FROM results WHERE status IN ({marks})", CACHED_STATUSES)
        return {key for (key,) in rows}

    def put(
        self, key: str, scenario_hash: str, outcome: PointOutcome, *, label: str, swept: dict[str, Any]
    ) -> None:
        """Store (or replace) one point's outcome in its own committed transaction."""
        row = (
            *(key, outcome.status, outcome.report_json, outcome.reason, outcome.detail),
            *(json.dumps(swept, sort_keys=True, default=str), label, scenario_hash, simulator.__version__),
            *(outcome.wall_s, datetime.now(UTC).isoformat(timespec="milliseconds")),
        )
        with self._conn:
            self._conn.execute(
                f"INSERT OR REPLACE INTO results ({_COLUMNS}) VALUES ({', '.join('?' * 11)})", row
            )

    def get_many(self, keys: Iterable[str]) -> dict[str, StoredResult]:
        """The stored rows of these keys (keys not stored are absent)."""
        wanted = sorted(set(keys))
        out: dict[str, StoredResult] = {}
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            query = f"SELECT {_COLUMNS} FROM results WHERE key IN ({', '.join('?' * len(chunk))})"
            out.update((r.key, r) for r in _rows(self._conn.execute(query, chunk)))
        return out

    def count(self) -> int:
        """Number of stored rows."""
        (n,) = self._conn.execute("SELECT COUNT(*) FROM results").fetchone()
        return int(n)


def _rows(cursor: sqlite3.Cursor) -> Iterator[StoredResult]:
    for key, status, report, reason, detail, swept, label, scen, version, wall_s, created in cursor:
        yield StoredResult(
            key, status, report, reason, detail, json.loads(swept), label, scen, version, wall_s, created
        )


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Create the table in a new store; refuse a store written by an incompatible layout."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version == SCHEMA_VERSION:
        return
    if version != 0:
        msg = f"results store layout {version} is not {SCHEMA_VERSION}; use a new output folder"
        raise UserInputError(msg, file=str(path))
    with conn:
        conn.execute(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
