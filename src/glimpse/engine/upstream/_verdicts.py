"""Verdicts on upstreams: applying them to circuit breakers, and holding the doubtful ones.

A 500 (or an error event, or silence) before the first token may be the request's
doing, not the upstream's. ``Suspects`` keeps such verdicts for the length of one
request: when another upstream then serves it, the suspects failed on their own and
are blamed; when it fails there the same way, or no other upstream can be asked,
the request is the likely cause and no breaker hears of it. An upstream that is
really broken still answers its active health checks badly, or fails requests that
others serve, so it is taken out all the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from glimpse.engine.upstream._failures import Verdict
from glimpse.engine.upstream.balancer import Upstream
from glimpse.engine.upstream.hooks import UpstreamMetrics
from glimpse.errors import GlimpseError

__all__ = ["Judge", "Suspects"]

logger = logging.getLogger(__name__)

#: ``judge(upstream, verdict, error, trial)``.
Judge = Callable[[Upstream, Verdict, GlimpseError | None, bool], None]


def apply_verdict(
    upstream: Upstream,
    verdict: Verdict,
    error: GlimpseError | None,
    trial: bool,
    metrics: UpstreamMetrics,
) -> None:
    """Tell the upstream's breaker; ``trial``: this attempt holds the half-open trial slot."""
    was_healthy = upstream.healthy
    if verdict == "fault":
        upstream.last_error = error.message if error is not None else "failed"
        upstream.breaker.record_failure()
    elif verdict == "healthy":
        upstream.breaker.record_success()
    elif verdict == "none" and trial:
        # Only the trial's owner may free the slot: a request sent while the circuit was
        # closed must not let a second trial go.
        upstream.breaker.release()
    if upstream.healthy != was_healthy:
        logger.warning("upstream %s is now %s", upstream.name, upstream.breaker.state)
        metrics.set_healthy(upstream.name, upstream.healthy)


@dataclass(slots=True, frozen=True)
class _Suspect:
    upstream: Upstream
    error: GlimpseError
    trial: bool


class Suspects:
    """Upstreams that failed one request in a way the request may have caused."""

    __slots__ = ("_judge", "_pending")

    def __init__(self, judge: Judge) -> None:
        self._judge = judge
        self._pending: list[_Suspect] = []

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, upstream: Upstream, error: GlimpseError, trial: bool) -> None:
        """Hold the verdict (and a half-open trial slot) until another upstream has answered."""
        self._pending.append(_Suspect(upstream, error, trial))

    def blame(self) -> None:
        """Another upstream serves the request: the suspects failed on their own."""
        pending, self._pending = self._pending, []
        for suspect in pending:
            self._judge(suspect.upstream, "fault", suspect.error, suspect.trial)

    def absolve(self) -> None:
        """The request failed the same way elsewhere, or nobody else could be asked: no verdict."""
        pending, self._pending = self._pending, []
        for suspect in pending:
            logger.info(
                "upstream %s failed a request that no other upstream served (%s); not held against it",
                suspect.upstream.name,
                suspect.error.message,
            )
            self._judge(suspect.upstream, "none", suspect.error, suspect.trial)
