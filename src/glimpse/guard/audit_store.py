"""Where audit records are kept, and the one thread that writes them.

Requests only ever ``put`` a record on a bounded queue; ``AuditWriter``'s thread
takes them off in batches and hands each batch to the store in one transaction.
That keeps disk latency, SQLite locks and a full or read-only disk off the event
loop. Nothing is lost silently: a batch the store refuses is counted as write
failures, a record that finds the queue full is counted as dropped, and both
reach the ``on_failure`` hook (for metrics) and the log, once per outage.

SQLite is the default store (WAL mode, so ``glimpse audit tail`` can read while
the server writes); rows older than the retention period are deleted when the
store opens and then hourly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, cast

__all__ = [
    "ADDED_COLUMNS",
    "AUDIT_COLUMNS",
    "AuditStore",
    "AuditWriter",
    "JsonlAuditStore",
    "SqliteAuditStore",
]

logger = logging.getLogger(__name__)

Row = tuple[float, dict[str, Any]]  # (epoch seconds, the record as AuditRecord.to_json renders it)

# Column order of the ``audit`` table after ``id`` and ``ts``; list-valued fields are JSON text.
AUDIT_COLUMNS = (
    "request_id",
    "client_id",
    "auth_method",
    "client_host",
    "route",
    "status",
    "latency_ms",
    "tokens_in",
    "tokens_out",
    "image_sha256",
    "image_bytes",
    "image_dims",
    "prompt_chars",
    "prompt_sha256",
    "question",
    "guard_flagged",
    "guard_rules",
    "model",
)
#: Columns added after the first release: added to an existing table when it is opened.
ADDED_COLUMNS = {"model": "TEXT"}
JSON_COLUMNS = frozenset({"image_sha256", "image_bytes", "image_dims", "guard_rules"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    client_id TEXT NOT NULL,
    auth_method TEXT NOT NULL,
    client_host TEXT,
    route TEXT NOT NULL,
    status INTEGER NOT NULL,
    latency_ms REAL NOT NULL,
    tokens_in INTEGER,
    tokens_out INTEGER,
    image_sha256 TEXT NOT NULL,
    image_bytes TEXT NOT NULL,
    image_dims TEXT NOT NULL,
    prompt_chars INTEGER NOT NULL,
    prompt_sha256 TEXT,
    question TEXT,
    guard_flagged INTEGER NOT NULL,
    guard_rules TEXT NOT NULL,
    model TEXT
);
CREATE INDEX IF NOT EXISTS audit_ts ON audit (ts);
CREATE INDEX IF NOT EXISTS audit_client_ts ON audit (client_id, ts);
CREATE INDEX IF NOT EXISTS audit_request_id ON audit (request_id);
"""
_INSERT = (
    f"INSERT INTO audit (ts, {', '.join(AUDIT_COLUMNS)}) "  # noqa: S608 (fixed column names)
    f"VALUES (?, {', '.join('?' for _ in AUDIT_COLUMNS)})"
)
_DAY_S = 86_400.0


class AuditStore(Protocol):
    """Runs on the writer thread only; ``write`` raises when the batch was not stored."""

    def write(self, rows: Sequence[Row]) -> None: ...

    def close(self) -> None: ...


def _sql_row(ts: float, payload: dict[str, Any]) -> tuple[Any, ...]:
    values: list[Any] = [ts]
    for column in AUDIT_COLUMNS:
        value = payload[column]
        if column in JSON_COLUMNS:
            value = json.dumps(value, separators=(",", ":"))
        elif column == "guard_flagged":
            value = int(value)
        values.append(value)
    return tuple(values)


class SqliteAuditStore:
    """The default store: one table, indexed by time, client and request id."""

    def __init__(
        self,
        path: Path,
        *,
        retention_days: int,
        clock: Callable[[], float] = time.time,
        prune_interval_s: float = 3600.0,
    ) -> None:
        self.path = path
        self._retention_s = retention_days * _DAY_S
        self._clock = clock
        self._prune_interval_s = prune_interval_s
        self._next_prune = 0.0
        self._conn: sqlite3.Connection | None = None
        self.pruned = 0

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=5.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL").fetchall()
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            present = {row[1] for row in conn.execute("PRAGMA table_info(audit)")}
            for column, kind in ADDED_COLUMNS.items():
                if column not in present:  # a store written by an older version
                    conn.execute(f"ALTER TABLE audit ADD COLUMN {column} {kind}")
        except sqlite3.Error:
            conn.close()
            raise
        return conn

    def write(self, rows: Sequence[Row]) -> None:
        try:
            if self._conn is None:
                self._conn = self._connect()
            with self._conn:
                self._conn.executemany(_INSERT, [_sql_row(ts, payload) for ts, payload in rows])
            self._maybe_prune(self._conn)
        except (sqlite3.Error, OSError):
            self.close()  # reconnect on the next batch: the file may have been moved or fixed
            raise

    def _maybe_prune(self, conn: sqlite3.Connection) -> None:
        now = self._clock()
        if now < self._next_prune:
            return
        self._next_prune = now + self._prune_interval_s
        with conn:
            deleted = conn.execute("DELETE FROM audit WHERE ts < ?", (now - self._retention_s,)).rowcount
        if deleted:
            self.pruned += deleted
            logger.info("deleted %d audit records older than the retention period", deleted)

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()


class JsonlAuditStore:
    """One JSON object per line, appended; rotation and retention are left to logrotate."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] | None = None

    def write(self, rows: Sequence[Row]) -> None:
        try:
            if self._file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._file = self.path.open("a", encoding="utf-8")
            self._file.write(
                "".join(json.dumps(p, ensure_ascii=False, separators=(",", ":")) + "\n" for _, p in rows)
            )
            self._file.flush()
        except (OSError, ValueError):
            self.close()
            raise

    def close(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            try:
                file.close()
            except OSError:
                logger.debug("closing the audit file failed", exc_info=True)


_DROP_WARNING_INTERVAL_S = 60.0
_STOP = object()  # queue items: a Row, a flush marker (threading.Event) or _STOP


class AuditWriter:
    """A bounded queue in front of a store, drained by one daemon thread.

    ``on_failure`` is called from the writer thread for each record a store
    refused (``"write"``) and from the caller's thread for each one dropped
    (``"dropped"``).
    """

    def __init__(
        self,
        store: AuditStore,
        *,
        max_queue: int = 10_000,
        batch_size: int = 500,
        on_failure: Callable[[str], None] | None = None,
    ) -> None:
        self._store = store
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self._batch_size = batch_size
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._closed = False
        self._failing = False
        self._last_drop_warning = -_DROP_WARNING_INTERVAL_S
        self.write_failures = 0
        self.dropped = 0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="glimpse-audit-writer", daemon=True)
        self._thread.start()

    def put(self, ts: float, payload: dict[str, Any]) -> None:
        """Enqueue without blocking; a full queue or a closed writer counts a drop."""
        with self._lock:
            if not self._closed:
                try:
                    self._queue.put_nowait((ts, payload))
                except queue.Full:
                    pass
                else:
                    return
            self.dropped += 1
            now = time.monotonic()
            warn = now - self._last_drop_warning >= _DROP_WARNING_INTERVAL_S
            if warn:
                self._last_drop_warning = now
        if warn:
            logger.warning(
                "audit queue full or writer closed: records dropped (%d so far, counted; "
                "logged at most once a minute)",
                self.dropped,
            )
        if self._on_failure is not None:
            self._on_failure("dropped")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything enqueued before this call is written or counted as failed."""
        if self._closed or not self._thread.is_alive():
            return True
        marker = threading.Event()
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(marker, timeout=timeout)
        except queue.Full:
            return False
        return marker.wait(max(0.0, deadline - time.monotonic()))

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued, then stop the thread and close the store (idempotent).

        With a ``timeout``, a store stuck for longer (a hung network disk) is
        abandoned: what is still queued is counted as dropped, and the daemon
        thread cannot keep the process alive.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
        with contextlib.suppress(queue.Full):  # waits for room: everything before it is written
            self._queue.put(_STOP, timeout=timeout)
        self._thread.join(timeout)
        if self._thread.is_alive():
            stranded = self._abandon_queue()
            self.dropped += stranded
            logger.warning(
                "audit writer still busy after %g s at shutdown; %d queued records abandoned",
                timeout,
                stranded,
            )
            if self._on_failure is not None:
                for _ in range(stranded):
                    self._on_failure("dropped")

    def _abandon_queue(self) -> int:
        """Empty the queue without writing it; returns how many records were in it."""
        stranded = 0
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return stranded
            if isinstance(item, threading.Event):
                item.set()  # nobody waits on a flush forever
            elif item is not _STOP:
                stranded += 1

    def _run(self) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            while len(items) < self._batch_size:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            rows: list[Row] = []
            markers: list[threading.Event] = []
            for item in items:
                if item is _STOP:
                    stop = True
                elif isinstance(item, threading.Event):
                    markers.append(item)
                else:
                    rows.append(cast(Row, item))
            if rows:
                self._write(rows)
            for marker in markers:
                marker.set()
        self._store.close()

    def _write(self, rows: list[Row]) -> None:
        try:
            self._store.write(rows)
        except Exception as exc:  # noqa: BLE001 (the writer thread must outlive any store error)
            self.write_failures += len(rows)
            if not self._failing:
                self._failing = True
                logger.warning(
                    "cannot write the audit store (%s: %s); records still go to the glimpse.audit "
                    "logger and failures are counted",
                    type(exc).__name__,
                    exc,
                )
            if self._on_failure is not None:
                for _ in rows:
                    self._on_failure("write")
            return
        self.written += len(rows)
        if self._failing:
            self._failing = False
            logger.info("audit store writable again (%d records failed so far)", self.write_failures)
