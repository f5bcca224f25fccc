"""One audit record per request: who, what route, what outcome, what it cost.

Records carry hashes and sizes, never prompt text, images, keys or tokens, so
the audit trail can be kept and shared without becoming a leak itself. Each
record goes to the ``glimpse.audit`` logger and, when ``audit_log_path`` is set,
is appended to that JSON-lines file by a background thread (a ``QueueListener``),
so a slow disk never stalls the event loop. A failed write never fails the
request: it is counted (``write_failures``) and logged once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from pathlib import Path
from typing import Any

import anyio.to_thread

from glimpse.config import GuardSettings
from glimpse.guard.prompt import GuardVerdict

__all__ = ["AUDIT_LOGGER", "AuditLog", "AuditRecord", "prompt_fingerprint"]

AUDIT_LOGGER = "glimpse.audit"
audit_logger = logging.getLogger(AUDIT_LOGGER)
logger = logging.getLogger(__name__)


def prompt_fingerprint(texts: Sequence[str]) -> tuple[int, str]:
    """Length and SHA-256 of the prompt: enough to match records, useless to read."""
    joined = "\n".join(texts)
    return len(joined), hashlib.sha256(joined.encode("utf-8")).hexdigest()


@dataclass(slots=True, frozen=True)
class AuditRecord:
    request_id: str
    client_id: str
    auth_method: str
    route: str
    status: int
    latency_ms: float
    client_host: str | None = None
    image_sha256: tuple[str, ...] = ()
    image_bytes: tuple[int, ...] = ()
    prompt_chars: int = 0
    prompt_sha256: str | None = None
    guard: GuardVerdict | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    ts: float = field(default_factory=time.time)

    @classmethod
    def build(cls, *, prompt_texts: Sequence[str] = (), **fields: Any) -> AuditRecord:
        """A record whose prompt fields are computed from ``prompt_texts`` (then dropped)."""
        chars, digest = prompt_fingerprint(prompt_texts)
        return cls(prompt_chars=chars, prompt_sha256=digest if prompt_texts else None, **fields)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ts"] = datetime.fromtimestamp(self.ts, UTC).isoformat(timespec="milliseconds")
        data["image_sha256"] = list(self.image_sha256)
        data["image_bytes"] = list(self.image_bytes)
        verdict = data.pop("guard")
        data["guard_flagged"] = bool(verdict and verdict["flagged"])
        data["guard_rules"] = list(verdict["rule_ids"]) if verdict else []
        data["latency_ms"] = round(self.latency_ms, 3)
        return data


class _CountingFileHandler(logging.FileHandler):
    """Counts failed writes instead of printing a traceback to stderr."""

    def __init__(self, path: Path, on_error: Callable[[], None]) -> None:
        super().__init__(path, mode="a", encoding="utf-8", delay=True)
        self.setFormatter(logging.Formatter("%(message)s"))
        self._on_error = on_error

    def emit(self, record: logging.LogRecord) -> None:
        # FileHandler opens the file (delay=True) outside emit's own error handling.
        try:
            super().emit(record)
        except OSError:
            self._on_error()

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        self._on_error()


class AuditLog:
    """Writes audit records; ``close()`` at shutdown (or ``aclose`` from async code)."""

    def __init__(self, settings: GuardSettings, *, on_failure: Callable[[], None] | None = None) -> None:
        self.write_failures = 0
        self._on_failure = on_failure
        self._lock = threading.Lock()
        self._warned = False
        self._queue: queue.SimpleQueue[logging.LogRecord] | None = None
        self._listener: QueueListener | None = None
        self._handler: _CountingFileHandler | None = None
        if settings.audit_log_path is not None:
            self._queue = queue.SimpleQueue()
            self._handler = _CountingFileHandler(settings.audit_log_path, self._write_failed)
            self._listener = QueueListener(self._queue, self._handler)
            self._listener.start()
            self._enqueue = QueueHandler(self._queue)

    def record(self, record: AuditRecord) -> None:
        """Emit one record; never blocks on the disk and never raises for I/O."""
        payload = record.to_json()
        line = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        audit_logger.info("%s", line, extra={"audit": payload})
        if self._queue is not None:
            self._enqueue.handle(logging.makeLogRecord({"name": AUDIT_LOGGER, "msg": line, "levelno": 20}))

    def _write_failed(self) -> None:
        self.write_failures += 1
        if self._on_failure is not None:
            self._on_failure()
        if not self._warned:
            self._warned = True
            logger.warning("cannot write the audit log file; records still go to the %s logger", AUDIT_LOGGER)

    def flush(self) -> None:
        """Block until every record so far is in the file (restarts the writer thread)."""
        with self._lock:
            if self._listener is None or self._handler is None:
                return
            self._listener.stop()
            self._handler.flush()
            self._listener.start()

    def close(self) -> None:
        with self._lock:
            if self._listener is None or self._handler is None:
                return
            self._listener.stop()
            self._handler.close()
            self._listener = None
            self._queue = None

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)
