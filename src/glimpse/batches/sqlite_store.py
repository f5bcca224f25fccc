"""The embedded ``BatchStore``: files in a directory, metadata and the line queue in SQLite (WAL).

One machine, no extra service. Every operation is one transaction run on one thread
(never on the event loop); the line queue's steps are in ``sqlite_tables``. Result files
are assembled from the stored outputs when a batch has no line left to run; assembling
them again after a crash writes the same files. SQLite's locking is not safe on a
network file system, so replicas on several machines use ``RedisBatchStore`` instead.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import anyio

from glimpse.batches import sqlite_tables
from glimpse.batches._filedir import FileDir
from glimpse.batches.records import (
    ACTIVE_STATUSES,
    BatchRecord,
    BatchStatus,
    ClaimedLine,
    FileRecord,
    LineOutcome,
    NewBatch,
    final_status,
    new_id,
    result_file_id,
)
from glimpse.errors import NotFound, RateLimited

__all__ = ["SqliteBatchStore", "default_batch_dir"]

_T = TypeVar("_T")

_BATCH_COLUMNS = (
    "id, owner, input_file_id, endpoint, completion_window, status, created_at, expires_at, metadata, "
    "total, completed, failed, in_progress_at, finalizing_at, completed_at, failed_at, cancelling_at, "
    "cancelled_at, expired_at, output_file_id, error_file_id"
)
_FILE_COLUMNS = "id, owner, filename, purpose, bytes, created_at, path"


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
        self.files = FileDir(directory / "files")
        self.files_dir = self.files.directory
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
        self.files.create()
        db = sqlite3.connect(
            self.directory / "batches.sqlite3", isolation_level=None, check_same_thread=False
        )
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # a line marked done survives a power cut too
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(sqlite_tables.SCHEMA)
        columns = {row["name"] for row in db.execute("PRAGMA table_info(batches)")}
        if "expired_at" not in columns:  # a store made before batches could expire
            db.execute("ALTER TABLE batches ADD COLUMN expired_at INTEGER")
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

    def _add_file(
        self, owner: str, filename: str, purpose: str, content: BinaryIO, max_bytes: int | None
    ) -> FileRecord:
        file_id = new_id("file-")
        size = self.files.write_upload(file_id, content, max_bytes)
        record = FileRecord(file_id, owner, filename, purpose, size, self._now(), self.files.path(file_id))
        try:
            with self._tx() as db:
                db.execute(
                    f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    (file_id, owner, filename, purpose, size, record.created_at, str(record.path)),
                )
        except BaseException:
            self.files.remove(file_id)
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

    def _purge_files(self, created_before: int) -> int:
        with self._tx() as db:
            rows = db.execute(
                "DELETE FROM files WHERE created_at < ? RETURNING path", (created_before,)
            ).fetchall()
        for row in rows:
            Path(row["path"]).unlink(missing_ok=True)
        return len(rows)

    async def purge_files(self, created_before: int) -> int:
        """Delete every file (record and content) created before ``created_before``; how many."""
        return await self._run(self._purge_files, created_before)

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
                    now + batch.window_s,
                    metadata,
                    len(batch.lines) + len(batch.refused),
                    len(batch.refused),
                    now,
                ),
            )
            sqlite_tables.insert(db, batch_id, batch.lines, batch.refused)
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
        with self._tx() as db:
            return sqlite_tables.claim(db, worker, count, self._clock(), lease_s)

    async def claim(self, worker: str, count: int, lease_s: float) -> list[ClaimedLine]:
        """Up to ``count`` lines of running batches, oldest batch first, held by ``worker`` ``lease_s``."""
        return await self._run(self._claim, worker, count, lease_s)

    def _renew(self, worker: str, lines: Sequence[ClaimedLine], lease_s: float) -> None:
        with self._tx() as db:
            sqlite_tables.renew(db, worker, lines, self._clock() + lease_s)

    async def renew(self, worker: str, lines: Sequence[ClaimedLine], lease_s: float) -> None:
        await self._run(self._renew, worker, lines, lease_s)

    def _complete(self, worker: str, line: ClaimedLine, outcome: LineOutcome) -> bool:
        with self._tx() as db:
            return sqlite_tables.complete(db, worker, line, outcome)

    async def complete(self, worker: str, line: ClaimedLine, outcome: LineOutcome) -> bool:
        """Store the line's output and mark it done if ``worker`` still holds it (else False, not kept)."""
        return await self._run(self._complete, worker, line, outcome)

    def _release(self, worker: str, lines: Sequence[ClaimedLine]) -> None:
        with self._tx() as db:
            sqlite_tables.release(db, worker, lines)

    async def release(self, worker: str, lines: Sequence[ClaimedLine]) -> None:
        """Put lines ``worker`` holds back in the queue, unanswered (a graceful shutdown)."""
        await self._run(self._release, worker, lines)

    # -- finalizing -----------------------------------------------------------------------------

    def _ready_to_finalize(self) -> list[str]:
        with self._tx() as db:
            sqlite_tables.expire_overdue(db, self._now())
            return sqlite_tables.ready_to_finalize(db, self._now())

    def _result_file(self, batch: sqlite3.Row, failed: bool) -> str | None:
        """Write one result file from the stored outputs (same id and content if written again)."""
        with self._tx() as db:
            outputs = sqlite_tables.outputs(db, batch["id"], failed)
        if not outputs:
            return None
        file_id = result_file_id(batch["id"], failed)
        size = self.files.write_lines(file_id, outputs)
        with self._tx() as db:
            db.execute(
                f"INSERT OR REPLACE INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                (
                    file_id,
                    batch["owner"],
                    f"{batch['id']}_{'error' if failed else 'output'}.jsonl",
                    "batch_output",
                    size,
                    self._now(),
                    str(self.files.path(file_id)),
                ),
            )
        return file_id

    def _finalize(self, batch_id: str) -> None:
        with self._tx() as db:
            batch = db.execute(
                "SELECT id, owner, cancelling_at, expired_at FROM batches WHERE id = ?", (batch_id,)
            ).fetchone()
        output_id = self._result_file(batch, failed=False)
        error_id = self._result_file(batch, failed=True)
        status, stamp = final_status(batch["cancelling_at"], batch["expired_at"])
        with self._tx() as db:
            db.execute(
                f"UPDATE batches SET status = ?, {stamp} = COALESCE({stamp}, ?), output_file_id = ?, "  # noqa: S608
                "error_file_id = ? WHERE id = ?",
                (str(status), self._now(), output_id, error_id, batch_id),
            )

    def _finalize_ready(self) -> list[str]:
        ids = self._ready_to_finalize()
        for batch_id in ids:
            self._finalize(batch_id)
        return ids

    async def finalize_ready(self) -> list[str]:
        """Expire the running batches past their window, then write the result files of every batch
        with no line left to run and close it; their ids.

        A batch left ``finalizing`` by a crash is finalized again, to the same files.
        """
        return await self._run(self._finalize_ready)
