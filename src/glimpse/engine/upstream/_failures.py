"""How one failed upstream attempt is judged: what the client sees, whether to retry elsewhere,
and what it says about the upstream's health.

A failure before anything reached the client may be retried on another upstream
(connection errors, 503, a stream that broke or ended before its first token); a
4xx never is, it would fail anywhere. An upstream that *says* it failed (a 5xx
other than 503, an error event) or goes silent before its first token may have
failed because of the request itself: an image in a system turn made Glimpse
nodes answer 500, and counting those against the breakers let any caller open
every circuit. Such a failure is a ``suspect``: the engine tries the request once
more elsewhere, and only when another upstream serves it is the first one blamed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import httpx

from glimpse.engine.upstream.hooks import Outcome
from glimpse.errors import GlimpseError, Overloaded, UpstreamError, UpstreamTimeout

__all__ = ["BadStatus", "Failure", "Progress", "Reported", "Retry", "Verdict", "classify"]

#: What an attempt says about its upstream: ``fault`` counts against its breaker,
#: ``healthy`` closes it, ``none`` says nothing (our side failed, or we cannot tell),
#: ``suspect`` waits for another upstream's answer to the same request.
Verdict = Literal["fault", "healthy", "none", "suspect"]


class BadStatus(Exception):
    """The upstream answered with a status other than 200."""

    def __init__(self, status: int, error: GlimpseError) -> None:
        super().__init__(status)
        self.status = status
        self.error = error


class Reported(Exception):
    """The upstream sent an error event in its stream; ``detail`` is its words, for the log only."""

    def __init__(self, error: GlimpseError, detail: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.detail = detail


class Retry(Exception):
    """This attempt failed in a way another upstream may not; ``error`` is what it was."""

    def __init__(self, error: GlimpseError, *, suspect: bool = False) -> None:
        super().__init__(error.message)
        self.error = error
        self.suspect = suspect


def _nothing() -> None:
    return None


@dataclass(slots=True)
class Progress:
    #: Something of this request has been handed to the client: no more retries.
    sent: bool = False
    #: Answer chunks (text or reasoning) relayed: at least one token each.
    tokens: int = 0
    #: Called when this upstream produced output or finished: the request is servable.
    on_output: Callable[[], None] = _nothing

    def output(self) -> None:
        self.sent = True
        self.on_output()


@dataclass(slots=True, frozen=True)
class Failure:
    outcome: Outcome
    error: GlimpseError
    retry: bool
    verdict: Verdict


def _status_failure(exc: BadStatus) -> Failure:
    if exc.status == 503:  # busy or draining: its own state, whatever was asked
        return Failure("5xx", exc.error, True, "fault")
    if exc.status >= 500:
        return Failure("5xx", exc.error, True, "suspect")
    return Failure("4xx", exc.error, False, "healthy")


def classify(exc: Exception, sent: bool) -> Failure:
    if isinstance(exc, BadStatus):
        return _status_failure(exc)
    if isinstance(exc, Reported):
        # After text went out nothing can be retried, and who is at fault cannot be told.
        return Failure("stream_error", exc.error, not sent, "none" if sent else "suspect")
    if isinstance(exc, httpx.PoolTimeout):
        # Our own connection pool is full: this says nothing of the upstream, and another
        # upstream would wait for the same pool.
        error: GlimpseError = Overloaded(
            "all connections to the upstreams are busy; retry shortly", retry_after=1
        )
        return Failure("local_pool_full", error, False, "none")
    if isinstance(exc, httpx.ConnectTimeout):
        return Failure("timeout", UpstreamTimeout("could not connect to an upstream in time"), True, "fault")
    if isinstance(exc, httpx.TimeoutException):
        error = UpstreamTimeout("the upstream did not answer in time")
        return Failure("timeout", error, not sent, "fault" if sent else "suspect")
    if isinstance(exc, httpx.ConnectError):
        return Failure("connect_error", UpstreamError("could not connect to an upstream"), True, "fault")
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        error = UpstreamError("the upstream connection broke during the answer")
        return Failure("stream_error", error, not sent, "fault")
    if isinstance(exc, GlimpseError):
        # Malformed, oversized or truncated streams: the upstream broke the protocol.
        return Failure("stream_error", exc, not sent, "fault")
    return Failure(
        "stream_error", UpstreamError(f"upstream exchange failed: {type(exc).__name__}"), False, "fault"
    )
