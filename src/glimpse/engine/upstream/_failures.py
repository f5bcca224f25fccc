"""How one failed upstream attempt is judged: what the client sees, whether to retry elsewhere,
and whether it counts against the upstream's circuit breaker."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

from glimpse.engine.upstream.hooks import Outcome
from glimpse.errors import GlimpseError, Overloaded, UpstreamError, UpstreamTimeout

__all__ = ["BadStatus", "Failure", "Progress", "Retry", "classify"]


class BadStatus(Exception):
    def __init__(self, status: int, error: GlimpseError) -> None:
        super().__init__(status)
        self.status = status
        self.error = error


class Retry(Exception):
    """This attempt failed in a way another upstream may not; ``error`` is what it was."""

    def __init__(self, error: GlimpseError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(slots=True)
class Progress:
    #: Something of this request has been handed to the client: no more retries.
    sent: bool = False
    chunks: int = 0


@dataclass(slots=True, frozen=True)
class Failure:
    outcome: Outcome
    error: GlimpseError
    retry: bool
    #: Counts against the upstream's circuit breaker (its fault, not the request's);
    #: ``None``: no verdict on the upstream at all (the fault was on our side).
    upstream_fault: bool | None


def classify(exc: Exception, sent: bool, upstream: str, read_timeout_s: float) -> Failure:
    if isinstance(exc, BadStatus):
        outcome: Outcome = "5xx" if exc.status >= 500 else "4xx"
        return Failure(outcome, exc.error, exc.status == 503 and not sent, exc.status >= 500)
    if isinstance(exc, httpx.PoolTimeout):
        # Our own connection pool is full: this says nothing of the upstream, and another
        # upstream would wait for the same pool.
        error: GlimpseError = Overloaded(
            "all connections to the upstreams are busy; retry shortly", retry_after=1
        )
        return Failure("local_pool_full", error, False, None)
    if isinstance(exc, httpx.ConnectTimeout):
        error = UpstreamTimeout(f"could not connect to upstream {upstream} in time")
        return Failure("timeout", error, not sent, True)
    if isinstance(exc, httpx.TimeoutException):
        error = UpstreamTimeout(f"upstream went silent for {read_timeout_s:g} s")
        return Failure("timeout", error, False, True)
    if isinstance(exc, httpx.ConnectError):
        return Failure(
            "connect_error", UpstreamError(f"could not connect to upstream {upstream}"), not sent, True
        )
    if isinstance(exc, httpx.NetworkError | httpx.RemoteProtocolError):
        error = UpstreamError("the upstream connection broke during the answer")
        return Failure("stream_error", error, not sent, True)
    if isinstance(exc, GlimpseError):
        return Failure("stream_error", exc, False, True)
    return Failure(
        "stream_error", UpstreamError(f"upstream exchange failed: {type(exc).__name__}"), False, True
    )
