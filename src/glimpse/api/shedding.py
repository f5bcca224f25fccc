"""Load shedding at the front door: refusing a request the engine has no room for costs almost nothing.

Under overload most requests are refused, and on a small machine the CPU (and the GIL
the engine thread shares with the event loop) spent refusing them is taken from the
requests being served. ``AdmissionMiddleware`` refuses them before the body is read,
but still behind FastAPI's middleware stack, a per-request log line and an audit
record: about a millisecond each. Here, in front of all of it, a generation route's
request that arrives while the engine is full gets a 503 built once at start-up. Only
the capacity refusal is made here; everything else (auth, scopes, rate limits, the
drain) stays with admission, which also re-checks capacity for what gets through.

Shed requests are counted in the metrics like any refusal, but not logged one by one:
a line per second says how many were shed, so a flood cannot turn into a flood of logs.
They are not audited: no caller was identified and no body was read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.types import Receive, Scope, Send

from glimpse.api.admission import OVERLOADED_RETRY_AFTER_S, Admission
from glimpse.api.errors import error_body
from glimpse.api.middleware import SECURITY_HEADERS
from glimpse.errors import Overloaded
from glimpse.obs import Metrics, sanitize_request_id

if TYPE_CHECKING:
    from glimpse.api.state import AppState

__all__ = ["LoadShedder"]

logger = logging.getLogger("glimpse.access")

SHED_MESSAGE = "The server is at capacity; retry shortly."
#: Bodies up to this size that have fully arrived are consumed, so the connection stays open.
SMALL_BODY_BYTES = 64 * 1024
#: Seconds between two summary lines about shed requests.
LOG_EVERY_S = 1.0


def _safe_request_id(raw: bytes | None) -> bytes:
    """The client's ``X-Request-ID`` to echo if it is safe (``obs.sanitize_request_id``), else a new one."""
    return sanitize_request_id(raw.decode("latin-1") if raw else None).encode()


def _small_body(scope: Scope) -> bool:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            return value.isdigit() and int(value) <= SMALL_BODY_BYTES
    return False  # chunked: its size is unknown


async def _take_arrived_body(scope: Scope, receive: Receive) -> None:
    """Consume a small body if all of it has already arrived, so the connection can be reused.

    A response sent before the request's body is read forces the server to close the
    connection, and the client's next request pays for a new one on both sides (on a
    2-core machine under 3x overload that was the difference between 0.88 and 0.99 of
    capacity answered). A body still on its way is not waited for, and a large one is
    never touched: the connection closes, as it would anyway.
    """
    if not _small_body(scope):
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(0):
            while (await receive()).get("more_body", False):
                pass


class LoadShedder:
    """Decide from the request line alone whether the engine is full, and answer 503 if so."""

    def __init__(
        self,
        admission: Admission,
        metrics: Metrics,
        app_state: Callable[[], AppState | None],
        *,
        cors: bool = False,
    ) -> None:
        self.admission = admission
        self.metrics = metrics
        self.app_state = app_state
        #: Browsers read a cross-origin 503 only with CORS headers: those requests take the full path.
        self.cors = cors
        self._generating = frozenset(key for key, policy in admission.policies.items() if policy.generates)
        body = json.dumps(error_body(SHED_MESSAGE, Overloaded.error_type, Overloaded.code)).encode()
        self._body = body
        self._headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", str(OVERLOADED_RETRY_AFTER_S).encode()),
            *SECURITY_HEADERS,
        ]
        status = f"HTTP/1.1 {int(Overloaded.status_code)} {Overloaded.status_code.phrase}\r\n".encode()
        self._raw_head = status + b"".join(name + b": " + value + b"\r\n" for name, value in self._headers)
        #: The paths the HTTP protocol may shed by itself, as they appear on the request line.
        self.post_paths = frozenset(path.encode() for method, path in self._generating if method == "POST")
        self._unlogged = 0

    def refuses(self, scope: Scope) -> bool:
        """True when this request would only be refused for capacity later: refuse it now."""
        if scope["type"] != "http":
            return False
        origin = any(name == b"origin" for name, _ in scope.get("headers") or ())
        return self.refuses_head(str(scope.get("method")), str(scope.get("path")), origin=origin)

    def refuses_head(self, method: str, path: str, *, origin: bool) -> bool:
        if (method, path) not in self._generating or (self.cors and origin):
            return False
        state = self.app_state()
        return state is not None and self.admission.at_capacity(state)

    def raw_response(self, request_id: bytes | None, *, close: bool) -> bytes:
        """The whole 503 as bytes, for the HTTP protocol to write itself (``api.h11_shed``)."""
        connection = b"connection: close\r\n" if close else b""
        rid = _safe_request_id(request_id)
        return self._raw_head + b"x-request-id: " + rid + b"\r\n" + connection + b"\r\n" + self._body

    def record(self, path: str, elapsed_s: float) -> None:
        """Count one shed request (metrics at once; the log line a second later, summed)."""
        self.metrics.observe_rejected(Overloaded.code)
        self.metrics.observe_request(path, int(Overloaded.status_code), elapsed_s)
        self._note_shed()

    async def refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        await _take_arrived_body(scope, receive)
        raw = next((value for name, value in scope.get("headers") or () if name == b"x-request-id"), None)
        headers = [*self._headers, (b"x-request-id", _safe_request_id(raw))]
        await send({"type": "http.response.start", "status": int(Overloaded.status_code), "headers": headers})
        await send({"type": "http.response.body", "body": self._body})
        self.record(str(scope["path"]), time.perf_counter() - started)

    def _note_shed(self) -> None:
        if not self._unlogged:  # the first of a burst: its summary is written a second later
            asyncio.get_running_loop().call_later(LOG_EVERY_S, self._log_shed)
        self._unlogged += 1

    def _log_shed(self) -> None:
        logger.warning(
            "shed %d requests at capacity in the last %.0f s",
            self._unlogged,
            LOG_EVERY_S,
            extra={"shed": self._unlogged, "status": int(Overloaded.status_code)},
        )
        self._unlogged = 0
