"""Log configuration: JSON lines with the request id, and secrets redacted.

Configured once by the CLI/app. Every record gets the current request's id from
a context variable, so any log line written while handling a request (in any
module, in tasks started by it) can be joined to that request.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import json
import logging
import logging.handlers
import queue
import random
import re
import sys
from collections.abc import Iterator
from typing import IO, Any

from glimpse.config import ObsSettings

__all__ = [
    "JsonFormatter",
    "RedactingFilter",
    "RequestIdFilter",
    "configure_logging",
    "get_request_id",
    "new_request_id",
    "redact",
    "request_id_context",
    "reset_request_id",
    "sanitize_request_id",
    "set_request_id",
    "wants_json",
]

_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("glimpse_request_id", default=None)

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def new_request_id() -> str:
    """32 random hex digits, like ``uuid4().hex``, without the system call.

    ``uuid4`` reads ``os.urandom``, which gives up the interpreter lock; on the event
    loop, with the engine thread holding it, getting it back could take a switch interval
    per id, several ids per request. Request ids need to be unique, not unpredictable;
    ``random``'s generator is seeded from the system once and again in a forked child.
    """
    return f"{random.getrandbits(128):032x}"


def sanitize_request_id(value: str | None) -> str:
    """The client's ``X-Request-ID`` if it is safe to log and echo, else a fresh one.

    Restricting the alphabet keeps it out of log injection and header
    splitting; the length bound keeps one header from bloating every line.
    """
    if value is not None and _REQUEST_ID_RE.fullmatch(value):
        return value
    return new_request_id()


def get_request_id() -> str | None:
    return _request_id.get()


def set_request_id(value: str | None) -> contextvars.Token[str | None]:
    return _request_id.set(value)


def reset_request_id(token: contextvars.Token[str | None]) -> None:
    _request_id.reset(token)


@contextlib.contextmanager
def request_id_context(value: str) -> Iterator[str]:
    token = _request_id.set(value)
    try:
        yield value
    finally:
        _request_id.reset(token)


# -- redaction -----------------------------------------------------------------

# No pattern consumes a quote or backslash, so redacting a finished JSON line
# keeps it valid JSON.
_VALUE = r"[^\s\"',;&\\]+"
_REDACTIONS: tuple[tuple[re.Pattern[str], str], ...] = (
    # "Authorization: Bearer xyz", "authorization=Basic xyz", "'authorization': 'xyz'"
    (
        re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic|token)\s+)?" + _VALUE),
        r"\1[REDACTED]",
    ),
    (re.compile(r"(?i)\b(bearer\s+)" + _VALUE), r"\1[REDACTED]"),
    # api_key=..., "x-api-key": "...", password: ..., client_secret=..., access_token=...
    (
        re.compile(
            r"(?i)\b((?:x[-_])?api[-_]?key|password|passwd|(?:client[-_])?secret|(?:access|refresh|id)[-_]token"
            r"|token)([\"']?\s*[:=]\s*[\"']?)" + _VALUE
        ),
        r"\1\2[REDACTED]",
    ),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), "[REDACTED]"),  # OpenAI-style keys
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), "[REDACTED]"),  # JWTs
    # Passwords in URLs (redis://user:pw@host)
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s\"'\\]*):[^@/\s\"'\\]+@"), r"\1:[REDACTED]@"),
)

_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
}


#: What every pattern above needs (in the case-folded text; the key=value pattern only after
#: a separator): a line without any of it skips the six substitutions. Redaction ran on every
#: line and on every extra, at about 0.3 ms a line, more than answering a refused request.
_FOLDED_WORDS = ("authorization", "bearer", "sk-", "://")
_FOLDED_KEY_VALUE = re.compile(r"""(?:api[-_]?key|passw(?:or)?d|secret|token)["']?\s*[:=]""")


def _may_hold_a_credential(text: str) -> bool:
    # casefold() maps what the patterns' (?i) matches (ſ, the Kelvin sign) to ASCII, except İ and ı.
    folded = text.casefold().replace("i\u0307", "i").replace("\u0131", "i")
    return (
        any(word in folded for word in _FOLDED_WORDS)
        or "eyJ" in text
        or _FOLDED_KEY_VALUE.search(folded) is not None
    )


def redact(text: str) -> str:
    """Mask things that look like credentials: a last line of defence, not a licence to log them."""
    if not _may_hold_a_credential(text):
        return text
    for pattern, replacement in _REDACTIONS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Redacts the message (with its arguments merged in) and string extras of every record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            return True  # bad %-args: let the handler report it, never raise from logging
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        for name, value in list(vars(record).items()):
            if name not in _RESERVED and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class RequestIdFilter(logging.Filter):
    """Stamps ``record.request_id`` from the context (unless the caller passed one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "request_id", None) is None:
            record.request_id = _request_id.get()
        return True


# -- formatting ------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, request_id, then extras."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        for name, value in vars(record).items():
            if name not in _RESERVED and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # The whole line, so nested extras and tracebacks are covered too.
        return redact(json.dumps(entry, ensure_ascii=False, default=str))


class _PlainFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class _GlimpseHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Marks the handler ``configure_logging`` installed, so calling it again replaces it."""


class _GlimpseQueueHandler(logging.handlers.QueueHandler):
    """The logging thread's side of background logging: it stamps the request id (a context
    variable, readable only here) and hands the record over; redaction, JSON formatting and
    the write happen in the listener's thread.

    The server's event loop logs two lines per request (access, audit); formatting and
    writing them there lengthened every callback that logged, and every refusal queued
    behind one waited for it.
    """

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        # The arguments merged now, as they are: the caller may change them after the call.
        with contextlib.suppress(TypeError, ValueError):  # bad %-args: the listener's handler reports them
            record.msg, record.args = record.getMessage(), None
        return record


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or already closed
        return False


def wants_json(settings: ObsSettings, stream: IO[str]) -> bool:
    """JSON lines for collectors, readable lines for a person at a terminal, unless set."""
    if settings.log_json is not None:
        return settings.log_json
    return not _is_terminal(stream)


def configure_logging(
    settings: ObsSettings, stream: IO[str] | None = None, *, background: bool = False
) -> logging.handlers.QueueListener | None:
    """Route every logger (uvicorn's too, if run with ``log_config=None``) to one handler.

    ``background`` (the server): records are formatted and written by a listener thread;
    the caller stops the returned listener at exit, which writes what is still queued.
    """
    target = stream if stream is not None else sys.stderr
    writer = _GlimpseHandler(target)
    writer.setFormatter(JsonFormatter() if wants_json(settings, target) else _PlainFormatter())
    writer.addFilter(RedactingFilter())
    listener: logging.handlers.QueueListener | None = None
    handler: logging.Handler = writer
    if background:
        records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        handler = _GlimpseQueueHandler(records)
        listener = logging.handlers.QueueListener(records, writer, respect_handler_level=True)
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _GlimpseHandler | _GlimpseQueueHandler)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers.clear()
        uvicorn_logger.propagate = True
    # Per-request lines come from Glimpse's own middleware; uvicorn's access log would repeat them.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    if listener is not None:
        listener.start()
    return listener
