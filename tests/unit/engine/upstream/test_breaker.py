import pytest

from glimpse.engine.upstream.breaker import BreakerState, CircuitBreaker

from ._fakes import FakeClock


def make(threshold: int = 3, cooldown: float = 10.0):
    clock = FakeClock()
    return CircuitBreaker(failure_threshold=threshold, cooldown_s=cooldown, clock=clock), clock


def test_opens_after_consecutive_failures_only():
    breaker, _ = make(threshold=3)
    breaker.record_failure()
    breaker.record_failure()
    breaker.record_success()  # resets the streak
    breaker.record_failure()
    breaker.record_failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.try_acquire()
    assert not breaker.available()


def test_half_open_allows_exactly_one_trial_after_cooldown():
    breaker, clock = make(threshold=1, cooldown=10.0)
    breaker.record_failure()
    clock.advance(9.9)
    assert breaker.state is BreakerState.OPEN
    assert breaker.seconds_until_trial() == pytest.approx(0.1)
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.try_acquire()
    assert not breaker.try_acquire()  # the trial is out
    assert not breaker.available()


def test_trial_success_closes_and_failure_reopens():
    breaker, clock = make(threshold=2, cooldown=5.0)
    breaker.trip()
    clock.advance(5.0)
    assert breaker.try_acquire()
    breaker.record_failure()
    assert breaker.state is BreakerState.OPEN  # a failed trial re-opens at once
    clock.advance(5.0)
    assert breaker.try_acquire()
    breaker.record_success()
    assert breaker.state is BreakerState.CLOSED
    assert breaker.consecutive_failures == 0


def test_cancelled_trial_releases_the_slot():
    breaker, clock = make(threshold=1, cooldown=1.0)
    breaker.record_failure()
    clock.advance(1.0)
    assert breaker.try_acquire()
    breaker.release()
    assert breaker.try_acquire()


def test_success_during_cooldown_does_not_close():
    breaker, clock = make(threshold=1, cooldown=10.0)
    breaker.record_failure()
    breaker.record_success()
    assert breaker.state is BreakerState.OPEN
    # Late failures of requests sent before the trip do not extend the cool-down.
    clock.advance(6.0)
    breaker.record_failure()
    clock.advance(4.0)
    assert breaker.state is BreakerState.HALF_OPEN
