"""Health of a shared store that guards fail open on: count every failure, log each outage once."""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["FailOpen"]

logger = logging.getLogger("glimpse.guard")


class FailOpen:
    """Tracks one store's outages so a Redis blip neither fails requests nor floods the log."""

    def __init__(self, down_message: str, up_message: str, on_failure: Callable[[], None] | None) -> None:
        self._down = down_message
        self._up = up_message
        self._on_failure = on_failure
        self.degraded = False
        self.failures = 0

    def failed(self, exc: BaseException) -> None:
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
