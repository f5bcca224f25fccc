"""OpenAI's Batch API below HTTP: stored files, batches, and the durable queue of their lines.

Framework-free: the API layer (``glimpse.api.batch``) parses requests and runs each
line through the live chat pipeline; this package keeps what must survive a restart,
in SQLite on one machine (``SqliteBatchStore``) or in Redis shared by replicas
(``RedisBatchStore``).
"""

from glimpse.batches.lines import (
    BodyCheck,
    ParsedInput,
    error_line,
    error_message,
    expired_line,
    parse_input,
    response_line,
)
from glimpse.batches.records import (
    ACTIVE_STATUSES,
    BatchRecord,
    BatchStatus,
    BatchStore,
    ClaimedLine,
    FileRecord,
    FileStore,
    LineOutcome,
    LineQueue,
    NewBatch,
    final_status,
    new_id,
    result_file_id,
)
from glimpse.batches.redis_store import RedisBatchStore
from glimpse.batches.sqlite_store import SqliteBatchStore, default_batch_dir

__all__ = [
    "ACTIVE_STATUSES",
    "BatchRecord",
    "BatchStatus",
    "BatchStore",
    "BodyCheck",
    "ClaimedLine",
    "FileRecord",
    "FileStore",
    "LineOutcome",
    "LineQueue",
    "NewBatch",
    "ParsedInput",
    "RedisBatchStore",
    "SqliteBatchStore",
    "default_batch_dir",
    "error_line",
    "error_message",
    "expired_line",
    "final_status",
    "new_id",
    "parse_input",
    "response_line",
    "result_file_id",
]
