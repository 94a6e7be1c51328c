"""The results store: one SQLite file in the batch's output folder, the single source of truth of a batch.

One row per point, keyed by sha256 of the resolved scenario's ``content_hash()`` and the simulator
version. Every result is written in its own transaction (WAL journal), so a killed batch loses at most the
points that were in flight, and the primary key means a point is never stored twice. ``results.csv`` and
``reports/`` are derived from this file.

Two batches on one store share the work (issue #12): before running a point a batch *claims* it (a row of
``claims`` with its owner's host, pid and token, in one ``BEGIN IMMEDIATE`` transaction that also checks
the point is not stored yet). A point claimed by a live owner is left to it; a claim whose process is gone
(a killed batch) is taken over. A claim from another host counts as live for ``CLAIM_STALE_S``.

A store that is not a SQLite file (truncated, random bytes, text), or that cannot be written, is a
``UserInputError`` saying so and how to start over, never a ``sqlite3`` traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import sqlite3
import time
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
_OPEN_ATTEMPTS = 40  # retries of a store creation that raced another batch (about 40 s at most)
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
_CLAIMS = """
CREATE TABLE IF NOT EXISTS claims (
    key        TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    pid        INTEGER NOT NULL,
    token      TEXT NOT NULL,    -- one per batch run (two batches in one process differ)
    claimed    REAL NOT NULL     -- time.time() of the claim
)
"""
_COLUMNS = "key, status, report, reason, detail, swept, label, scenario, version, sim_wall_s, created"
_IN_CHUNK = 500  # keys per SELECT ... IN (...)
# A claim from another host cannot be checked with kill(pid, 0): it is trusted this long (a point of the
# largest shipped scenarios simulates in minutes), then taken over.
CLAIM_STALE_S = 6 * 3600.0


def now_iso() -> str:
    """The time as the store writes it (``created``): ISO 8601, UTC, milliseconds; sorts as text."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _store_error(e: sqlite3.Error, path: Path) -> UserInputError:
    """The user-facing error of a store that cannot be read or written."""
    text = str(e)
    if isinstance(e, sqlite3.DatabaseError) and ("not a database" in text or "malformed" in text):
        how = "it is not a results store (truncated or overwritten?): move it away or delete it to start over"
    elif "readonly" in text or "unable to open" in text or "disk I/O" in text:
        how = "it cannot be written here: give a writable --out folder"
    elif "full" in text:
        how = "the disk is full: free space and re-run to resume"
    else:
        how = "move it away or delete it to start over"
    return UserInputError(f"results store: {text}; {how}", file=str(path))


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.token = secrets.token_hex(8)

    @classmethod
    def open(cls, out_dir: Path) -> ResultStore:
        """Open (creating if needed) ``out_dir/results.sqlite`` in WAL mode."""
        path = out_dir / STORE_FILE
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            reason = os.strerror(e.errno) if e.errno else e.__class__.__name__
            raise UserInputError(f"cannot create the output folder: {reason}", file=str(out_dir)) from None
        # Two batches that create the store at the same moment race for the switch to WAL, which SQLite may
        # refuse at once ("database is locked") instead of waiting out the busy timeout: retry that for a while.
        for attempt in range(_OPEN_ATTEMPTS):
            try:
                conn = sqlite3.connect(path, timeout=30.0)
            except sqlite3.Error as e:
                raise _store_error(e, path) from None
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                _migrate(conn, path)
            except sqlite3.OperationalError as e:
                conn.close()
                if "locked" not in str(e) or attempt == _OPEN_ATTEMPTS - 1:
                    raise _store_error(e, path) from None
                time.sleep(0.05 * (attempt + 1))
                continue
            except sqlite3.Error as e:
                conn.close()
                raise _store_error(e, path) from None
            except BaseException:
                conn.close()
                raise
            return cls(conn, path)
        raise AssertionError("unreachable")

    def _guard(self, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` with sqlite errors (disk full, the file replaced) as one-line user errors."""
        try:
            return fn(*args)
        except sqlite3.Error as e:
            raise _store_error(e, self.path) from None

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
        query = f"SELECT key FROM results WHERE status IN ({marks})"
        return self._guard(lambda: {key for (key,) in self._conn.execute(query, CACHED_STATUSES)})

    # ----------------------------------------------------------------------------------------- claims
    def claim(self, keys: Iterable[str], *, since: str, force: bool = False) -> set[str]:
        """Claim the points of ``keys`` nobody else is computing; returns the keys now ours.

        A key is skipped when it is stored final (unless ``force``), or stored at all at or after
        ``since`` (``now_iso()`` at the start of this batch: another batch did it meanwhile), or claimed by
        a live owner other than this store."""
        return set(self._guard(self._claim, sorted(set(keys)), since, force))

    def _claim(self, keys: list[str], since: str, force: bool) -> list[str]:
        mine: list[str] = []
        now = time.time()
        self._conn.execute("BEGIN IMMEDIATE")  # one writer at a time: check and claim atomically
        try:
            for start in range(0, len(keys), _IN_CHUNK):
                chunk = keys[start : start + _IN_CHUNK]
                marks = ", ".join("?" * len(chunk))
                stored = dict(
                    self._conn.execute(
                        f"SELECT key, status || ' ' || created FROM results WHERE key IN ({marks})", chunk
                    )
                )
                claims = {
                    k: (h, p, t, c)
                    for k, h, p, t, c in self._conn.execute(
                        f"SELECT key, host, pid, token, claimed FROM claims WHERE key IN ({marks})", chunk
                    )
                }
                for key in chunk:
                    if key in stored:
                        status, created = stored[key].split(" ", 1)
                        if (status in CACHED_STATUSES and not force) or created >= since:
                            continue
                    if key in claims and not self._stale(*claims[key], now=now):
                        continue
                    self._conn.execute(
                        "INSERT OR REPLACE INTO claims (key, host, pid, token, claimed) VALUES (?, ?, ?, ?, ?)",
                        (key, self.host, self.pid, self.token, now),
                    )
                    mine.append(key)
            self._conn.execute("COMMIT")
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        return mine

    def _stale(self, host: str, pid: int, token: str, claimed: float, *, now: float) -> bool:
        """Whether a claim may be taken over: ours, its process gone, or from another host and old."""
        if token == self.token:
            return True
        if host == self.host:
            return not _alive(pid)
        return now - claimed > CLAIM_STALE_S

    def release(self, keys: Iterable[str]) -> None:
        """Drop this store's claims on ``keys`` (done, or given up on an interrupt)."""
        wanted = sorted(set(keys))

        def drop() -> None:
            with self._conn:
                for start in range(0, len(wanted), _IN_CHUNK):
                    chunk = wanted[start : start + _IN_CHUNK]
                    marks = ", ".join("?" * len(chunk))
                    self._conn.execute(
                        f"DELETE FROM claims WHERE token = ? AND key IN ({marks})", [self.token, *chunk]
                    )

        self._guard(drop)

    def put(
        self, key: str, scenario_hash: str, outcome: PointOutcome, *, label: str, swept: dict[str, Any]
    ) -> None:
        """Store (or replace) one point's outcome in its own committed transaction."""
        row = (
            *(key, outcome.status, outcome.report_json, outcome.reason, outcome.detail),
            *(json.dumps(swept, sort_keys=True, default=str), label, scenario_hash, simulator.__version__),
            *(outcome.wall_s, now_iso()),
        )

        def write() -> None:
            with self._conn:
                self._conn.execute(
                    f"INSERT OR REPLACE INTO results ({_COLUMNS}) VALUES ({', '.join('?' * 11)})", row
                )
                self._conn.execute("DELETE FROM claims WHERE key = ? AND token = ?", (key, self.token))

        self._guard(write)

    def get_many(self, keys: Iterable[str]) -> dict[str, StoredResult]:
        """The stored rows of these keys (keys not stored are absent)."""
        wanted = sorted(set(keys))
        out: dict[str, StoredResult] = {}

        def read() -> None:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                query = f"SELECT {_COLUMNS} FROM results WHERE key IN ({', '.join('?' * len(chunk))})"
                out.update((r.key, r) for r in _rows(self._conn.execute(query, chunk)))

        self._guard(read)
        return out

    def count(self) -> int:
        """Number of stored rows."""
        (n,) = self._guard(lambda: self._conn.execute("SELECT COUNT(*) FROM results").fetchone())
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
        with conn:
            conn.execute(_CLAIMS)  # added to layout 1 without changing it: older stores gain the table
        return
    if version != 0:
        msg = f"results store layout {version} is not {SCHEMA_VERSION}; use a new output folder"
        raise UserInputError(msg, file=str(path))
    with conn:
        conn.execute(_SCHEMA)
        conn.execute(_CLAIMS)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
