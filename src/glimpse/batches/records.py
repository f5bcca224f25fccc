"""What the Batch API stores: files, batches, queued lines, and the interfaces every store offers.

The API layer talks to storage only through ``BatchStore`` (the routes) and its part
``LineQueue`` (the worker), so the embedded SQLite store (``SqliteBatchStore``) and the
Redis store shared by replicas (``RedisBatchStore``) are swapped without touching a route
or the worker. The queue is not a separate piece that could sit beside either metadata
store: a line's output must be recorded with its batch's counters in one atomic step,
so each store keeps both. Records are plain frozen values; owners are opaque strings
(the caller's client id, ``""`` when auth is off and everyone shares).
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

__all__ = [
    "ACTIVE_STATUSES",
    "BatchRecord",
    "BatchStatus",
    "BatchStore",
    "ClaimedLine",
    "FileRecord",
    "FileStore",
    "final_status",
    "LineOutcome",
    "LineQueue",
    "NewBatch",
    "new_id",
    "result_file_id",
]


class BatchStatus(enum.StrEnum):
    VALIDATING = "validating"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


#: Statuses of a batch still being worked on (counted against a caller's active-batch limit).
ACTIVE_STATUSES = frozenset(
    {BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING, BatchStatus.CANCELLING}
)


def new_id(prefix: str) -> str:
    """An unguessable id in OpenAI's style (``file-…``, ``batch_…``, ``batch_req_…``)."""
    return f"{prefix}{secrets.token_hex(12)}"


def result_file_id(batch_id: str, failed: bool) -> str:
    """The id of a batch's output (or error) file: fixed by the batch, so writing it again after a
    crash replaces it instead of adding a second file."""
    return f"file-{batch_id.removeprefix('batch_')}{'e' if failed else 'o'}"


def final_status(cancelling_at: int | None, expired_at: int | None) -> tuple[BatchStatus, str]:
    """How a finalized batch ends, and the field that stamps it: expired (its window closed while it
    ran), cancelled (its owner asked), else completed."""
    if expired_at is not None:
        return BatchStatus.EXPIRED, "expired_at"
    if cancelling_at is not None:
        return BatchStatus.CANCELLED, "cancelled_at"
    return BatchStatus.COMPLETED, "completed_at"


@dataclass(slots=True, frozen=True)
class FileRecord:
    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: Path


@dataclass(slots=True, frozen=True)
class BatchRecord:
    id: str
    owner: str
    input_file_id: str
    endpoint: str
    completion_window: str
    status: BatchStatus
    created_at: int
    expires_at: int
    metadata: Mapping[str, str] | None
    total: int
    completed: int
    failed: int
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    expired_at: int | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None


@dataclass(slots=True, frozen=True)
class LineOutcome:
    """One line's entry for the output (``failed`` False) or the error file: a JSON line, written once."""

    output: str
    failed: bool


@dataclass(slots=True, frozen=True)
class NewBatch:
    """A batch to create: its accepted lines (index, custom_id, request body as JSON text) and the
    lines refused at validation, already answered (index -> error-file line)."""

    owner: str
    #: Who submitted it, as the API layer serialised it (the worker runs each line as that caller).
    principal: str
    input_file_id: str
    endpoint: str
    completion_window: str
    #: Seconds from creation until the batch expires (its ``completion_window``).
    window_s: int
    metadata: Mapping[str, str] | None
    lines: Sequence[tuple[int, str, str]]
    refused: Mapping[int, tuple[str, LineOutcome]]


@dataclass(slots=True, frozen=True)
class ClaimedLine:
    """A line handed to one worker until it completes, releases or stops renewing it."""

    batch_id: str
    index: int
    custom_id: str
    body: str
    principal: str
    #: The queue's handle on the claim (the Redis stream entry id; unused by SQLite).
    token: str = ""


class FileStore(Protocol):
    """Uploaded and result files: contents in a directory, records where every replica sees them."""

    async def add_file(
        self, owner: str, filename: str, purpose: str, content: BinaryIO, max_bytes: int | None = None
    ) -> FileRecord: ...

    async def get_file(self, file_id: str, owner: str) -> FileRecord: ...

    async def list_files(
        self, owner: str, purpose: str | None, limit: int, after: str | None
    ) -> list[FileRecord]: ...

    async def delete_file(self, file_id: str, owner: str) -> None: ...

    async def purge_files(self, created_before: int) -> int: ...


class LineQueue(Protocol):
    """The durable queue of batch lines, as the worker of each replica sees it.

    Guarantees: a claimed line is held by one worker until it is completed or released,
    or until its claim is not renewed within the visibility timeout (its process died),
    when any worker may claim it again. A line's output is recorded at most once: a
    ``complete`` for a line already answered (or, in SQLite, whose lapsed claim another
    worker took) returns False and keeps nothing, so a line run twice is answered once.
    ``finalize_ready`` closes every batch with nothing left to run (and expires those past
    their window), writing its result files; running it again after a crash, or on two
    replicas at once, writes the same files.
    """

    async def claim(self, worker: str, count: int, lease_s: float) -> list[ClaimedLine]: ...

    async def renew(self, worker: str, lines: Sequence[ClaimedLine], lease_s: float) -> None: ...

    async def complete(self, worker: str, line: ClaimedLine, outcome: LineOutcome) -> bool: ...

    async def release(self, worker: str, lines: Sequence[ClaimedLine]) -> None: ...

    async def finalize_ready(self) -> list[str]: ...


class BatchStore(FileStore, LineQueue, Protocol):
    """Files, batches and their line queue. Every lookup takes the caller's ``owner`` and
    treats another owner's object as absent."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create_batch(self, batch: NewBatch, max_active: int) -> BatchRecord: ...

    async def get_batch(self, batch_id: str, owner: str) -> BatchRecord: ...

    async def list_batches(self, owner: str, limit: int, after: str | None) -> list[BatchRecord]: ...

    async def cancel_batch(self, batch_id: str, owner: str) -> BatchRecord: ...
