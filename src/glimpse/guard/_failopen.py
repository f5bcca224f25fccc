"""Health of a shared store that guards fail open on: count every failure, log each outage once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["FailOpen"]

logger = logging.getLogger("glimpse.guard")


class FailOpen:
    """Tracks one store's outages so a Redis blip neither fails requests nor floods the log.

    After a failure the store is left alone for ``backoff_s``: a Redis that stalls would
    otherwise cost every request the full timeout on each call, for as long as it stalls.
    """

    def __init__(
        self,
        down_message: str,
        up_message: str,
        on_failure: Callable[[], None] | None,
        *,
        backoff_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._down = down_message
        self._up = up_message
        self._on_failure = on_failure
        self._backoff_s = backoff_s
        self._clock = clock
        self._retry_at = 0.0
        self.degraded = False
        self.failures = 0

    def should_try(self) -> bool:
        """False while backing off after a failure: the caller lets the request through unchecked."""
        return self._clock() >= self._retry_at

    def failed(self, exc: BaseException) -> None:
        self._retry_at = self._clock() + self._backoff_s
        self.failures += 1
        if self._on_failure is not None:
            self._on_failure()
        if not self.degraded:
            self.degraded = True
            logger.warning("%s (%s)", self._down, type(exc).__name__)

    def recovered(self) -> None:
        if self.degraded:
            self.degraded = False
            logger.info("%s", self._up)
