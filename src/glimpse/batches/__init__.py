"""OpenAI's Batch API below HTTP: stored files, batches, and the durable queue of their lines.

Framework-free: the API layer (``glimpse.api.batch``) parses requests and runs each
line through the live chat pipeline; this package keeps what must survive a restart.
"""

from glimpse.batches.lines import (
    BodyCheck,
    ParsedInput,
    error_line,
    error_message,
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
    LineOutcome,
    NewBatch,
    new_id,
)
from glimpse.batches.sqlite_store import SqliteBatchStore, default_batch_dir

__all__ = [
    "ACTIVE_STATUSES",
    "BatchRecord",
    "BatchStatus",
    "BatchStore",
    "BodyCheck",
    "ClaimedLine",
    "FileRecord",
    "LineOutcome",
    "NewBatch",
    "ParsedInput",
    "SqliteBatchStore",
    "default_batch_dir",
    "error_line",
    "error_message",
    "new_id",
    "parse_input",
    "response_line",
]
