"""The embedded ``BatchStore``: files in a directory, metadata and the line queue in SQLite (WAL).

One machine, no extra service. Every operation is one transaction run on one thread
(never on the event loop): a line's output is stored in the same transaction that marks
it done, and only if the worker completing it still holds its claim, so a line whose
claim lapsed and was taken by another worker is answered once, by that worker. A claim
is a lease: not renewed within the visibility timeout (its process died), the line is
queued again. Result files are assembled from the stored outputs when a batch has no
line left to run; assembling them again after a crash writes the same files.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import anyio

from glimpse.batches.records import (
    ACTIVE_STATUSES,
    BatchRecord,
    BatchStatus,
    ClaimedLine,
    FileRecord,
    LineOutcome,
    NewBatch,
    new_id,
)
from glimpse.errors import NotFound, RateLimited, RequestTooLarge

__all__ = ["SqliteBatchStore", "default_batch_dir"]

_T = TypeVar("_T")
_COPY_CHUNK = 1 << 20
#: OpenAI's only completion window: a batch's ``expires_at`` is this long after its creation.
_WINDOW_S = 24 * 3600

_SCHEMA = """
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
    output_file_id TEXT,
    error_file_id TEXT
);
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
CREATE INDEX IF NOT EXISTS batches_by_owner ON batches (owner, status);
"""

_BATCH_COLUMNS = (
    "id, owner, input_file_id, endpoint, completion_window, status, created_at, expires_at, metadata, "
    "total, completed, failed, in_progress_at, finalizing_at, completed_at, failed_at, cancelling_at, "
    "cancelled_at, output_file_id, error_file_id"
)
_FILE_COLUMNS = "id, owner, filename, purpose, bytes, created_at, path"
_UNFINISHED = tuple(str(s) for s in (BatchStatus.IN_PROGRESS, BatchStatus.CANCELLING, BatchStatus.FINALIZING))


def default_batch_dir() -> Path:
    """Where the store lives when ``batch.dir`` is unset: beside the audit store, per user."""
    return Path("~/.cache/glimpse/batches").expanduser()


def _file(row: sqlite3.Row) -> FileRecord:
    return FileRecord(
        row["id"],
        row["owner"],
        row["filename"],
        row["purpose"],
        row["bytes"],
        row["created_at"],
        Path(row["path"]),
    )


def _batch(row: sqlite3.Row) -> BatchRecord:
    values = dict(row)
    values["status"] = BatchStatus(values["status"])
    values["metadata"] = None if values["metadata"] is None else json.loads(values["metadata"])
    return BatchRecord(**values)


class SqliteBatchStore:
    """``BatchStore`` on a directory: ``files/`` for contents, ``batches.sqlite3`` for everything else."""

    def __init__(self, directory: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.files_dir = directory / "files"
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._limiter = anyio.CapacityLimiter(1)

    # -- plumbing -------------------------------------------------------------------------------

    async def _run(self, func: Callable[..., _T], *args: Any) -> _T:
        return await anyio.to_thread.run_sync(partial(func, *args), limiter=self._limiter)

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``: taken at once, so reads inside it are current)."""
        if self._db is None:
            raise RuntimeError("the batch store is not open")
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.rollback()
                raise
            db.commit()

    def _open(self) -> None:
        self.files_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(
            self.directory / "batches.sqlite3", isolation_level=None, check_same_thread=False
        )
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a line marked done survives a power cut too
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(_SCHEMA)
        self._db = db

    async def open(self) -> None:
        await self._run(self._open)

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    async def close(self) -> None:
        await self._run(self._close)

    def _now(self) -> int:
        return int(self._clock())

    # -- files ----------------------------------------------------------------------------------

    def _write_content(self, file_id: str, content: BinaryIO, max_bytes: int | None) -> tuple[Path, int]:
        path = self.files_dir / f"{file_id}.jsonl"
        partial_path = path.with_suffix(".part")
        size = 0
        try:
            with partial_path.open("wb") as out:
                while chunk := content.read(_COPY_CHUNK):
                    size += len(chunk)
                    if max_bytes is not None and size > max_bytes:
                        raise RequestTooLarge(f"The file is larger than {max_bytes} bytes.")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            partial_path.replace(path)
        finally:
            partial_path.unlink(missing_ok=True)
        return path, size

    def _add_file(
        self, owner: str, filename: str, purpose: str, content: BinaryIO, max_bytes: int | None
    ) -> FileRecord:
        file_id = new_id("file-")
        path, size = self._write_content(file_id, content, max_bytes)
        record = FileRecord(file_id, owner, filename, purpose, size, self._now(), path)
        try:
            with self._tx() as db:
                db.execute(
                    f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    (file_id, owner, filename, purpose, size, record.created_at, str(path)),
                )
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return record

    async def add_file(
        self, owner: str, filename: str, purpose: str, content: BinaryIO, max_bytes: int | None = None
    ) -> FileRecord:
        """Store an upload; ``RequestTooLarge`` (nothing kept) once it passes ``max_bytes``."""
        return await self._run(self._add_file, owner, filename, purpose, content, max_bytes)

    def _get_file(self, file_id: str, owner: str) -> FileRecord:
        with self._tx() as db:
            row = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE id = ? AND owner = ?",  # noqa: S608
                (file_id, owner),
            ).fetchone()
        if row is None:
            raise NotFound(f"No such file: {file_id!r}.", param="file_id")
        return _file(row)

    async def get_file(self, file_id: str, owner: str) -> FileRecord:
        return await self._run(self._get_file, file_id, owner)

    def _page(self, table: str, owner: str, after: str | None) -> tuple[str, list[Any]]:
        where, args = "owner = ?", [owner]
        if after is not None:
            where += f" AND seq < (SELECT seq FROM {table} WHERE id = ? AND owner = ?)"  # noqa: S608
            args += [after, owner]
        return where, args

    def _list_files(self, owner: str, purpose: str | None, limit: int, after: str | None) -> list[FileRecord]:
        where, args = self._page("files", owner, after)
        if purpose is not None:
            where += " AND purpose = ?"
            args.append(purpose)
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE {where} ORDER BY seq DESC LIMIT ?",  # noqa: S608
                (*args, limit),
            ).fetchall()
        return [_file(row) for row in rows]

    async def list_files(
        self, owner: str, purpose: str | None, limit: int, after: str | None
    ) -> list[FileRecord]:
        """Newest first; ``after``: the last id of the previous page."""
        return await self._run(self._list_files, owner, purpose, limit, after)

    def _delete_file(self, file_id: str, owner: str) -> None:
        with self._tx() as db:
            row = db.execute(
                "DELETE FROM files WHERE id = ? AND owner = ? RETURNING path", (file_id, owner)
            ).fetchone()
        if row is None:
            raise NotFound(f"No such file: {file_id!r}.", param="file_id")
        Path(row["path"]).unlink(missing_ok=True)  # a running batch holds its lines in the database

    async def delete_file(self, file_id: str, owner: str) -> None:
        await self._run(self._delete_file, file_id, owner)

    # -- batches --------------------------------------------------------------------------------

    def _create_batch(self, batch: NewBatch, max_active: int) -> BatchRecord:
        batch_id, now = new_id("batch_"), self._now()
        metadata = None if batch.metadata is None else json.dumps(dict(batch.metadata))
        active = tuple(str(s) for s in ACTIVE_STATUSES)
        with self._tx() as db:
            (running,) = db.execute(
                f"SELECT COUNT(*) FROM batches WHERE owner = ? AND status IN ({','.join('?' * len(active))})",  # noqa: S608
                (batch.owner, *active),
            ).fetchone()
            if running >= max_active:
                raise RateLimited(
                    f"{running} of your batches are unfinished; at most {max_active} may be at once.",
                    retry_after=60,
                )
            db.execute(
                "INSERT INTO batches (id, owner, principal, input_file_id, endpoint, completion_window, "
                "status, created_at, expires_at, metadata, total, failed, in_progress_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    batch_id,
                    batch.owner,
                    batch.principal,
                    batch.input_file_id,
                    batch.endpoint,
                    batch.completion_window,
                    str(BatchStatus.IN_PROGRESS),
                    now,
                    now + _WINDOW_S,
                    metadata,
                    len(batch.lines) + len(batch.refused),
                    len(batch.refused),
                    now,
                ),
            )
            db.executemany(
                "INSERT INTO lines (batch_id, idx, custom_id, body, state) VALUES (?, ?, ?, ?, 'queued')",
                ((batch_id, index, custom_id, body) for index, custom_id, body in batch.lines),
            )
            db.executemany(
                "INSERT INTO lines (batch_id, idx, custom_id, state, output, failed) "
                "VALUES (?, ?, ?, 'done', ?, 1)",
                ((batch_id, index, cid, out.output) for index, (cid, out) in batch.refused.items()),
            )
            row = db.execute(f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ?", (batch_id,)).fetchone()  # noqa: S608
        return _batch(row)

    async def create_batch(self, batch: NewBatch, max_active: int) -> BatchRecord:
        """Queue a validated batch's lines; ``RateLimited`` if its owner has ``max_active`` unfinished."""
        return await self._run(self._create_batch, batch, max_active)

    def _get_batch(self, batch_id: str, owner: str) -> BatchRecord:
        with self._tx() as db:
            row = db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE id = ? AND owner = ?",  # noqa: S608
                (batch_id, owner),
            ).fetchone()
        if row is None:
            raise NotFound(f"No such batch: {batch_id!r}.", param="batch_id")
        return _batch(row)

    async def get_batch(self, batch_id: str, owner: str) -> BatchRecord:
        return await self._run(self._get_batch, batch_id, owner)

    def _list_batches(self, owner: str, limit: int, after: str | None) -> list[BatchRecord]:
        where, args = self._page("batches", owner, after)
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {_BATCH_COLUMNS} FROM batches WHERE {where} ORDER BY seq DESC LIMIT ?",  # noqa: S608
                (*args, limit),
            ).fetchall()
        return [_batch(row) for row in rows]

    async def list_batches(self, owner: str, limit: int, after: str | None) -> list[BatchRecord]:
        """Newest first; ``after``: the last id of the previous page."""
        return await self._run(self._list_batches, owner, limit, after)

    def _cancel_batch(self, batch_id: str, owner: str) -> BatchRecord:
        with self._tx() as db:
            db.execute(
                "UPDATE batches SET status = ?, cancelling_at = ? "
                "WHERE id = ? AND owner = ? AND status IN (?, ?)",
                (
                    str(BatchStatus.CANCELLING),
                    self._now(),
                    batch_id,
                    owner,
                    str(BatchStatus.VALIDATING),
                    str(BatchStatus.IN_PROGRESS),
                ),
            )
        return self._get_batch(batch_id, owner)

    async def cancel_batch(self, batch_id: str, owner: str) -> BatchRecord:
        """Stop handing out the batch's lines; those running finish, then it is ``cancelled``."""
        return await self._run(self._cancel_batch, batch_id, owner)

    # -- the line queue ---------------------------------------------------------------------------

    def _claim(self, worker: str, count: int, lease_s: float) -> list[ClaimedLine]:
        now = self._clock()
        with self._tx() as db:
            rows = db.execute(
                "SELECT l.batch_id, l.idx, l.custom_id, l.body, b.principal FROM lines l "
                "JOIN batches b ON b.id = l.batch_id WHERE b.status = ? "
                "AND (l.state = 'queued' OR (l.state = 'running' AND l.lease_until < ?)) "
                "ORDER BY b.seq, l.idx LIMIT ?",
                (str(BatchStatus.IN_PROGRESS), now, count),
            ).fetchall()
            db.executemany(
                "UPDATE lines SET state = 'running', worker = ?, lease_until = ? "
                "WHERE batch_id = ? AND idx = ?",
                ((worker, now + lease_s, row["batch_id"], row["idx"]) for row in rows),
            )
        return [ClaimedLine(r["batch_id"], r["idx"], r["custom_id"], r["body"], r["principal"]) for r in rows]

    async def claim(self, worker: str, count: int, lease_s: float) -> list[ClaimedLine]:
        """Up to ``count`` lines of running batches, oldest batch first, held by ``worker`` ``lease_s``."""
        return await self._run(self._claim, worker, count, lease_s)

    def _renew(self, worker: str, lines: Sequence[ClaimedLine], lease_s: float) -> None:
        until = self._clock() + lease_s
        with self._tx() as db:
            db.executemany(
                "UPDATE lines SET lease_until = ? WHERE batch_id = ? AND idx = ? AND state = 'running' "
                "AND worker = ?",
                ((until, line.batch_id, line.index, worker) for line in lines),
            )

    async def renew(self, worker: str, lines: Sequence[ClaimedLine], lease_s: float) -> None:
        await self._run(self._renew, worker, lines, lease_s)

    def _complete(self, worker: str, line: ClaimedLine, outcome: LineOutcome) -> bool:
        with self._tx() as db:
            done = db.execute(
                "UPDATE lines SET state = 'done', output = ?, failed = ?, worker = NULL, lease_until = NULL "
                "WHERE batch_id = ? AND idx = ? AND state = 'running' AND worker = ?",
                (outcome.output, int(outcome.failed), line.batch_id, line.index, worker),
            ).rowcount
            if done:
                column = "failed" if outcome.failed else "completed"
                db.execute(
                    f"UPDATE batches SET {column} = {column} + 1 WHERE id = ?",  # noqa: S608
                    (line.batch_id,),
                )
        return bool(done)

    async def complete(self, worker: str, line: ClaimedLine, outcome: LineOutcome) -> bool:
        """Store the line's output and mark it done if ``worker`` still holds it (else False, not kept)."""
        return await self._run(self._complete, worker, line, outcome)

    def _release(self, worker: str, lines: Sequence[ClaimedLine]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE lines SET state = 'queued', worker = NULL, lease_until = NULL "
                "WHERE batch_id = ? AND idx = ? AND state = 'running' AND worker = ?",
                ((line.batch_id, line.index, worker) for line in lines),
            )

    async def release(self, worker: str, lines: Sequence[ClaimedLine]) -> None:
        """Put lines ``worker`` holds back in the queue, unanswered (a graceful shutdown)."""
        await self._run(self._release, worker, lines)

    def _requeue_expired(self) -> int:
        with self._tx() as db:
            return int(
                db.execute(
                    "UPDATE lines SET state = 'queued', worker = NULL, lease_until = NULL "
                    "WHERE state = 'running' AND lease_until < ?",
                    (self._clock(),),
                ).rowcount
            )

    async def requeue_expired(self) -> int:
        """Queue again the lines whose claim lapsed (a worker died with them); how many."""
        return await self._run(self._requeue_expired)

    # -- finalizing -----------------------------------------------------------------------------

    def _ready_to_finalize(self) -> list[str]:
        marks = ",".join("?" * len(_UNFINISHED))
        with self._tx() as db:
            rows = db.execute(
                f"SELECT b.id FROM batches b WHERE b.status IN ({marks}) "  # noqa: S608
                "AND NOT EXISTS (SELECT 1 FROM lines l WHERE l.batch_id = b.id AND (l.state = 'running' "
                "OR (l.state = 'queued' AND b.status = ?))) ORDER BY b.seq",
                (*_UNFINISHED, str(BatchStatus.IN_PROGRESS)),
            ).fetchall()
            ids = [row["id"] for row in rows]
            db.executemany(
                "UPDATE batches SET status = ?, finalizing_at = COALESCE(finalizing_at, ?) WHERE id = ?",
                ((str(BatchStatus.FINALIZING), self._now(), batch_id) for batch_id in ids),
            )
        return ids

    def _result_file(self, batch: sqlite3.Row, kind: str, failed: bool) -> str | None:
        """Write one result file from the stored outputs (same id and content if written again)."""
        assert self._db is not None
        with self._lock:
            outputs = [
                row["output"]
                for row in self._db.execute(
                    "SELECT output FROM lines WHERE batch_id = ? AND state = 'done' AND failed = ? "
                    "ORDER BY idx",
                    (batch["id"], int(failed)),
                )
            ]
        if not outputs:
            return None
        file_id = f"file-{batch['id'].removeprefix('batch_')}{kind}"
        path = self.files_dir / f"{file_id}.jsonl"
        with (self.files_dir / f"{file_id}.part").open("w", encoding="utf-8") as out:
            out.writelines(f"{line}\n" for line in outputs)
            out.flush()
            os.fsync(out.fileno())
        (self.files_dir / f"{file_id}.part").replace(path)
        with self._tx() as db:
            db.execute(
                f"INSERT OR REPLACE INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    file_id,
                    batch["owner"],
                    f"{batch['id']}_{'error' if failed else 'output'}.jsonl",
                    "batch_output",
                    path.stat().st_size,
                    self._now(),
                    str(path),
                ),
            )
        return file_id

    def _finalize(self, batch_id: str) -> None:
        assert self._db is not None
        with self._lock:
            batch = self._db.execute(
                "SELECT id, owner, cancelling_at FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
        output_id = self._result_file(batch, "o", failed=False)
        error_id = self._result_file(batch, "e", failed=True)
        cancelled = batch["cancelling_at"] is not None
        status, stamp = (
            (BatchStatus.CANCELLED, "cancelled_at") if cancelled else (BatchStatus.COMPLETED, "completed_at")
        )
        with self._tx() as db:
            db.execute(
                f"UPDATE batches SET status = ?, {stamp} = ?, output_file_id = ?, error_file_id = ? "  # noqa: S608
                "WHERE id = ?",
                (str(status), self._now(), output_id, error_id, batch_id),
            )

    def _finalize_ready(self) -> list[str]:
        ids = self._ready_to_finalize()
        for batch_id in ids:
            self._finalize(batch_id)
        return ids

    async def finalize_ready(self) -> list[str]:
        """Write the result files of every batch with no line left to run, and close it; their ids.

        A batch left ``finalizing`` by a crash is finalized again, to the same files.
        """
        return await self._run(self._finalize_ready)
