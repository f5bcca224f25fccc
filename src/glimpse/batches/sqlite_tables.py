"""The SQLite store's tables, and its line queue: one function per step, each run inside the
caller's write transaction (``SqliteBatchStore._tx``).

A claim is a lease: the line is ``running`` for one worker until ``lease_until``; after
that any claim may take it. Only the worker holding the claim can complete it, and the
output is written with the line marked ``done`` and the batch's counter raised, so a
line is answered once even when a worker that was thought dead comes back late.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from glimpse.batches.lines import expired_line
from glimpse.batches.records import BatchStatus, ClaimedLine, LineOutcome

__all__ = [
    "SCHEMA",
    "claim",
    "complete",
    "expire_overdue",
    "insert",
    "outputs",
    "ready_to_finalize",
    "release",
    "renew",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    path TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    owner TEXT NOT NULL,
    principal TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    metadata TEXT,
    total INTEGER NOT NULL,
    completed INTEGER NOT NULL DEFAULT 0,
    failed INTEGER NOT NULL DEFAULT 0,
    in_progress_at INTEGER,
    finalizing_at INTEGER,
    completed_at INTEGER,
    failed_at INTEGER,
    cancelling_at INTEGER,
    cancelled_at INTEGER,
    expired_at INTEGER,
    output_file_id TEXT,
    error_file_id TEXT
);
CREATE INDEX IF NOT EXISTS batches_by_owner ON batches (owner, status);
CREATE INDEX IF NOT EXISTS files_by_age ON files (created_at);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    body TEXT,
    state TEXT NOT NULL,
    worker TEXT,
    lease_until REAL,
    output TEXT,
    failed INTEGER,
    PRIMARY KEY (batch_id, idx)
);
CREATE INDEX IF NOT EXISTS lines_by_state ON lines (state, batch_id);
"""

_UNFINISHED = tuple(str(s) for s in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING, BatchStatus.FINALIZING))


def insert(
    db: sqlite3.Connection,
    batch_id: str,
    lines: Sequence[tuple[int, str, str]],
    refused: Mapping[int, tuple[str, LineOutcome]],
) -> None:
    """Queue a new batch's lines; its refused lines are stored answered."""
    db.executemany(
        "INSERT INTO lines (batch_id, idx, custom_id, body, state) VALUES (?, ?, ?, ?, 'queued')",
        ((batch_id, index, custom_id, body) for index, custom_id, body in lines),
    )
    db.executemany(
        "INSERT INTO lines (batch_id, idx, custom_id, state, output, failed) VALUES (?, ?, ?, 'done', ?, 1)",
        ((batch_id, index, cid, out.output) for index, (cid, out) in refused.items()),
    )


def claim(db: sqlite3.Connection, worker: str, count: int, now: float, lease_s: float) -> list[ClaimedLine]:
    """Up to ``count`` queued (or lapsed) lines of running batches, oldest batch first."""
    rows = db.execute(
        "SELECT l.batch_id, l.idx, l.custom_id, l.body, b.principal FROM lines l "
        "JOIN batches b ON b.id = l.batch_id WHERE b.status = ? "
        "AND (l.state = 'queued' OR (l.state = 'running' AND l.lease_until < ?)) "
        "ORDER BY b.seq, l.idx LIMIT ?",
        (str(BatchStatus.IN_PROGRESS), now, count),
    ).fetchall()
    db.executemany(
        "UPDATE lines SET state = 'running', worker = ?, lease_until = ? WHERE batch_id = ? AND idx = ?",
        ((worker, now + lease_s, row["batch_id"], row["idx"]) for row in rows),
    )
    return [ClaimedLine(r["batch_id"], r["idx"], r["custom_id"], r["body"], r["principal"]) for r in rows]


def renew(db: sqlite3.Connection, worker: str, lines: Sequence[ClaimedLine], until: float) -> None:
    db.executemany(
        "UPDATE lines SET lease_until = ? WHERE batch_id = ? AND idx = ? AND state = 'running' "
        "AND worker = ?",
        ((until, line.batch_id, line.index, worker) for line in lines),
    )


def complete(db: sqlite3.Connection, worker: str, line: ClaimedLine, outcome: LineOutcome) -> bool:
    done = db.execute(
        "UPDATE lines SET state = 'done', output = ?, failed = ?, worker = NULL, lease_until = NULL "
        "WHERE batch_id = ? AND idx = ? AND state = 'running' AND worker = ?",
        (outcome.output, int(outcome.failed), line.batch_id, line.index, worker),
    ).rowcount
    if done:
        column = "failed" if outcome.failed else "completed"
        db.execute(f"UPDATE batches SET {column} = {column} + 1 WHERE id = ?", (line.batch_id,))  # noqa: S608
    return bool(done)


def release(db: sqlite3.Connection, worker: str, lines: Sequence[ClaimedLine]) -> None:
    db.executemany(
        "UPDATE lines SET state = 'queued', worker = NULL, lease_until = NULL "
        "WHERE batch_id = ? AND idx = ? AND state = 'running' AND worker = ?",
        ((line.batch_id, line.index, worker) for line in lines),
    )


def expire_overdue(db: sqlite3.Connection, now: int) -> None:
    """Close running batches past ``expires_at``: each unanswered line (queued or running; a late
    answer is refused) is answered ``batch_expired`` in the error file, and the batch goes to
    ``finalizing`` to become ``expired``."""
    overdue = [
        row["id"]
        for row in db.execute(
            "SELECT id FROM batches WHERE status = ? AND expires_at <= ?", (str(BatchStatus.IN_PROGRESS), now)
        )
    ]
    for batch_id in overdue:
        rows = db.execute(
            "SELECT idx, custom_id FROM lines WHERE batch_id = ? AND state != 'done'", (batch_id,)
        ).fetchall()
        db.executemany(
            "UPDATE lines SET state = 'done', output = ?, failed = 1, worker = NULL, lease_until = NULL "
            "WHERE batch_id = ? AND idx = ?",
            ((expired_line(row["custom_id"]), batch_id, row["idx"]) for row in rows),
        )
        db.execute(
            "UPDATE batches SET failed = failed + ?, status = ?, finalizing_at = ?, expired_at = ? "
            "WHERE id = ?",
            (len(rows), str(BatchStatus.FINALIZING), now, now, batch_id),
        )


def ready_to_finalize(db: sqlite3.Connection, now: int) -> list[str]:
    """Unfinished batches with no line left to run, moved to ``finalizing``."""
    marks = ",".join("?" * len(_UNFINISHED))
    rows = db.execute(
        f"SELECT b.id FROM batches b WHERE b.status IN ({marks}) "  # noqa: S608
        "AND NOT EXISTS (SELECT 1 FROM lines l WHERE l.batch_id = b.id AND (l.state = 'running' "
        "OR (l.state = 'queued' AND b.status = ?))) ORDER BY b.seq",
        (*_UNFINISHED, str(BatchStatus.IN_PROGRESS)),
    ).fetchall()
    ids = [row["id"] for row in rows]
    db.executemany(
        "UPDATE batches SET status = ?, finalizing_at = COALESCE(finalizing_at, ?) WHERE id = ?",
        ((str(BatchStatus.FINALIZING), now, batch_id) for batch_id in ids),
    )
    return ids


def outputs(db: sqlite3.Connection, batch_id: str, failed: bool) -> list[str]:
    """A batch's answered lines for its output (or error) file, in input order."""
    return [
        row["output"]
        for row in db.execute(
            "SELECT output FROM lines WHERE batch_id = ? AND state = 'done' AND failed = ? ORDER BY idx",
            (batch_id, int(failed)),
        )
    ]
