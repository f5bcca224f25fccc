"""A per-upstream circuit breaker.

Closed: traffic flows and consecutive failures are counted. Open: after
``failure_threshold`` of them, no traffic for ``cooldown_s``. Half-open: after the
cool-down, exactly one trial (a request or an active health check) may go; its
success closes the circuit, its failure opens it for another cool-down. The clock
is injected so tests can move time without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

__all__ = ["BreakerState", "CircuitBreaker"]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    __slots__ = ("_clock", "_cooldown_s", "_failures", "_opened_at", "_threshold", "_trial_out")

    def __init__(self, *, failure_threshold: int, cooldown_s: float, clock: Callable[[], float]) -> None:
        self._threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_out = False

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self._cooldown_s:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def seconds_until_trial(self) -> float:
        """How long until a trial is allowed (0 when the circuit takes traffic now)."""
        if self._opened_at is None:
            return 0.0
        return max(0.0, self._opened_at + self._cooldown_s - self._clock())

    def available(self) -> bool:
        """Whether ``try_acquire`` would succeed, without taking the trial slot."""
        state = self.state
        return state is BreakerState.CLOSED or (state is BreakerState.HALF_OPEN and not self._trial_out)

    def try_acquire(self) -> bool:
        """Ask to send one request; in half-open state only one trial is out at a time."""
        state = self.state
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN and not self._trial_out:
            self._trial_out = True
            return True
        return False

    def release(self) -> None:
        """The request ended without a verdict (cancelled): let another trial go."""
        self._trial_out = False

    def record_success(self) -> None:
        if self.state is BreakerState.OPEN:
            # A late answer from before the trip, or a health check during the cool-down:
            # wait for the cool-down so a flapping upstream does not take traffic at once.
            return
        self._failures = 0
        self._opened_at = None
        self._trial_out = False

    def record_failure(self) -> None:
        state = self.state
        self._trial_out = False
        if state is BreakerState.OPEN:
            return  # failures of requests sent before the trip do not extend the cool-down
        self._failures += 1
        if state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._opened_at = self._clock()

    def trip(self) -> None:
        """Open at once, e.g. when the very first health check fails."""
        self._trial_out = False
        self._failures = max(self._failures, self._threshold)
        self._opened_at = self._clock()
