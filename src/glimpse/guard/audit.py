"""One audit record per request: who, what route, what outcome, what it cost.

Records carry hashes and sizes; the question itself only when the operator asks
for it (``audit_question``: ``hash`` by default, ``truncated`` or ``full``), and
never images, keys or tokens, so the audit trail can be kept and shared without
becoming a leak itself. Each record goes to the ``glimpse.audit`` logger and to
the configured store (SQLite by default, JSON lines, or none) through one
background writer thread, so a slow or broken disk never stalls the event loop
and never fails a request: failed writes and records dropped because the queue
was full are counted and reported through ``on_failure``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import anyio.to_thread

from glimpse.config import GuardSettings
from glimpse.guard.audit_store import AuditWriter, JsonlAuditStore, SqliteAuditStore
from glimpse.guard.prompt import GuardVerdict

__all__ = [
    "AUDIT_LOGGER",
    "AuditLog",
    "AuditRecord",
    "QuestionMode",
    "audit_hash_key",
    "default_audit_path",
    "prompt_fingerprint",
]

AUDIT_LOGGER = "glimpse.audit"
audit_logger = logging.getLogger(AUDIT_LOGGER)
logger = logging.getLogger(__name__)

QuestionMode = Literal["hash", "truncated", "full"]
_DEFAULT_DIR = Path("~/.cache/glimpse")


def default_audit_path(store: Literal["sqlite", "jsonl"]) -> Path:
    """Where the store lives when ``audit_log_path`` is unset (a per-user cache dir)."""
    name = "audit.sqlite3" if store == "sqlite" else "audit.jsonl"
    return (_DEFAULT_DIR / name).expanduser()


def _keyed_digest(text: str, key: bytes) -> str:
    # surrogatepass: a fingerprint must exist for any str, even one that is not valid Unicode.
    return hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def prompt_fingerprint(texts: Sequence[str], key: bytes) -> tuple[int, str]:
    """Length and HMAC-SHA256 of the prompt under ``key``: matches records, useless to read.

    Keyed because a plain hash of a short prompt is guessable: anyone holding the
    audit trail could hash candidate questions ("is this user asking about X?")
    and compare. Without the key the digests say nothing.
    """
    joined = "\n".join(texts)
    return len(joined), _keyed_digest(joined, key)


def audit_hash_key(settings: GuardSettings) -> bytes:
    """The configured ``audit_hash_key``, else a random key for this process.

    A random key means digests correlate only among records of one server
    process: after a restart the same prompt gets a different digest. Set the
    key (kept apart from the audit store) to correlate across restarts.
    """
    if settings.audit_hash_key is not None:
        return settings.audit_hash_key.get_secret_value().encode("utf-8")
    return secrets.token_bytes(32)


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
    image_dims: tuple[tuple[int, int], ...] = ()  # (width, height) per image
    prompt_chars: int = 0
    # HMAC-SHA256 of the prompt under the server's audit key, filled in by AuditLog.record
    # (the column keeps its old name so existing stores stay readable).
    prompt_sha256: str | None = None
    guard: GuardVerdict | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    #: The LoRA adapter that answered (``None``: the base model, or no generation).
    model: str | None = None
    ts: float = field(default_factory=time.time)
    # The prompt text, held only until the record is rendered under the configured
    # question mode; kept out of repr so a stray log of the record cannot leak it.
    question: str | None = field(default=None, repr=False)

    @classmethod
    def build(cls, *, prompt_texts: Sequence[str] = (), **fields: Any) -> AuditRecord:
        """A record of ``prompt_texts``; ``AuditLog.record`` adds their keyed digest."""
        question = "\n".join(prompt_texts)
        return cls(prompt_chars=len(question), question=question if prompt_texts else None, **fields)

    def to_json(self, question: QuestionMode = "hash", truncate_chars: int = 200) -> dict[str, Any]:
        """The record as stored; the question appears only when ``question`` says so."""
        return {
            "ts": datetime.fromtimestamp(self.ts, UTC).isoformat(timespec="milliseconds"),
            "request_id": self.request_id,
            "client_id": self.client_id,
            "auth_method": self.auth_method,
            "client_host": self.client_host,
            "route": self.route,
            "status": self.status,
            "latency_ms": round(self.latency_ms, 3),
            "tokens_in": self.tokens_in,
            "tokens_out": self.tokens_out,
            "image_sha256": list(self.image_sha256),
            "image_bytes": list(self.image_bytes),
            "image_dims": [list(dims) for dims in self.image_dims],
            "prompt_chars": self.prompt_chars,
            "prompt_sha256": self.prompt_sha256,
            "question": _question(self.question, question, truncate_chars),
            "guard_flagged": bool(self.guard and self.guard.flagged),
            "guard_rules": list(self.guard.rule_ids) if self.guard else [],
            "model": self.model,
        }


def _question(text: str | None, mode: QuestionMode, truncate_chars: int) -> str | None:
    if text is None or mode == "hash":
        return None
    if mode == "truncated" and len(text) > truncate_chars:
        return text[:truncate_chars] + "…"
    return text


FailureHook = Callable[[str], None]


class AuditLog:
    """The audit trail of one server; ``close()`` (or ``aclose()``) at shutdown flushes it.

    ``on_failure(reason)`` is called once per record the store did not get, with
    ``reason`` ``"write"`` (the store refused it; called on the writer thread, so
    the hook must be thread-safe, as Prometheus counters are) or ``"dropped"``
    (the queue was full or the log already closed), for the caller's metrics.
    """

    def __init__(
        self,
        settings: GuardSettings,
        *,
        on_failure: FailureHook | None = None,
        clock: Callable[[], float] = time.time,
        max_queue: int = 10_000,
    ) -> None:
        self._mode: QuestionMode = settings.audit_question
        self._hash_key = audit_hash_key(settings)
        self._truncate = settings.audit_truncate_chars
        self._on_failure = on_failure
        self._writer: AuditWriter | None = None
        self.path: Path | None = None
        if settings.audit_store != "off":
            self.path = settings.audit_log_path or default_audit_path(settings.audit_store)
            store = (
                SqliteAuditStore(self.path, retention_days=settings.audit_retention_days, clock=clock)
                if settings.audit_store == "sqlite"
                else JsonlAuditStore(self.path)
            )
            self._writer = AuditWriter(store, max_queue=max_queue, on_failure=on_failure)

    @property
    def write_failures(self) -> int:
        """Records the store could not write (each one is still in the audit logger's output)."""
        return self._writer.write_failures if self._writer else 0

    @property
    def dropped(self) -> int:
        """Records never handed to the store because its queue was full or it was closed."""
        return self._writer.dropped if self._writer else 0

    def record(self, record: AuditRecord) -> None:
        """Log and enqueue one record; never blocks on the disk and never raises for I/O."""
        if record.question is not None and record.prompt_sha256 is None:
            record = dataclasses.replace(record, prompt_sha256=_keyed_digest(record.question, self._hash_key))
        payload = record.to_json(self._mode, self._truncate)
        line = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        audit_logger.info("%s", line, extra={"audit": payload})
        if self._writer is not None:
            self._writer.put(record.ts, payload)

    def flush(self, timeout: float = 10.0) -> bool:
        """Block until every record so far is written (or failed); False on timeout."""
        return self._writer.flush(timeout) if self._writer else True

    def close(self, timeout: float | None = 30.0) -> None:
        """Write everything queued, then stop the writer; later records only reach the logger.

        A store that is stuck past ``timeout`` seconds is abandoned (the records
        still queued are counted as dropped) so shutdown cannot hang on a disk.
        """
        if self._writer is not None:
            self._writer.close(timeout)

    async def aclose(self) -> None:
        await anyio.to_thread.run_sync(self.close)
