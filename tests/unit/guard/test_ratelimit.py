import asyncio
import socket
import time
import uuid

import pytest

from glimpse.config import GuardSettings
from glimpse.errors import RateLimited
from glimpse.guard.auth import Principal
from glimpse.guard.ratelimit import MemoryRateLimitStore, RateLimiter, RedisRateLimitStore


class Clock:
    def __init__(self, now=1_700_000_000.0):
        self.now = now

    def __call__(self):
        return self.now


def _principal(client="ip:1.2.3.4", limit=None):
    return Principal(client_id=client, name=client, rate_limit_per_minute=limit)


async def _admitted(limiter, principal, attempts):
    admitted = 0
    for _ in range(attempts):
        try:
            await limiter.check(principal)
            admitted += 1
        except RateLimited:
            pass
    return admitted


async def test_zero_means_unlimited():
    limiter = RateLimiter(GuardSettings(rate_limit_per_minute=0), clock=Clock())
    assert await _admitted(limiter, _principal(), 500) == 500


async def test_burst_up_to_limit_then_429_with_retry_after():
    clock = Clock()
    limiter = RateLimiter(GuardSettings(rate_limit_per_minute=6), clock=clock)
    principal = _principal()
    assert await _admitted(limiter, principal, 6) == 6
    with pytest.raises(RateLimited) as info:
        await limiter.check(principal)
    assert info.value.status_code == 429
    assert info.value.retry_after == 10  # one request per 10 s at 6/min
    assert "6 requests per minute" in info.value.message


async def test_bucket_refills_with_time():
    clock = Clock()
    limiter = RateLimiter(GuardSettings(rate_limit_per_minute=6), clock=clock)
    principal = _principal()
    await _admitted(limiter, principal, 6)
    clock.now += 9.9
    with pytest.raises(RateLimited) as info:
        await limiter.check(principal)
    assert info.value.retry_after == 1
    clock.now += 0.2
    await limiter.check(principal)
    clock.now += 3600
    assert await _admitted(limiter, principal, 10) == 6  # never more than one burst


async def test_clients_are_limited_separately_and_keys_override_the_default():
    limiter = RateLimiter(GuardSettings(rate_limit_per_minute=2), clock=Clock())
    assert await _admitted(limiter, _principal("a"), 5) == 2
    assert await _admitted(limiter, _principal("b"), 5) == 2
    assert await _admitted(limiter, _principal("vip", limit=4), 5) == 4
    assert await _admitted(limiter, _principal("free", limit=0), 50) == 50


async def test_memory_store_forgets_least_recent_clients_beyond_its_bound():
    store = MemoryRateLimitStore(max_clients=2)
    for client in ("a", "b", "c"):
        assert await store.acquire(client, 1, 0.0) == 0.0
    assert await store.acquire("c", 1, 0.0) > 0  # c is still remembered
    assert await store.acquire("a", 1, 0.0) == 0.0  # a was evicted: fresh bucket


async def test_redis_store_is_shared_between_replicas(redis_url, redis_pools):
    clock = Clock()
    prefix = f"test:{uuid.uuid4().hex}:"
    failures: list[int] = []
    # Two replicas: two processes, each with its own pool.
    stores = [
        RedisRateLimitStore(
            redis_pools().connect(redis_url), prefix=prefix, on_failure=lambda: failures.append(1)
        )
        for _ in range(2)
    ]
    replicas = [RateLimiter(GuardSettings(rate_limit_per_minute=4), store, clock=clock) for store in stores]
    principal = _principal("key:shared")
    admitted, waits = 0, []
    for i in range(8):
        try:
            await replicas[i % 2].check(principal)
            admitted += 1
        except RateLimited as exc:
            waits.append(exc.retry_after)
    assert admitted == 4
    assert waits == [15, 15, 15, 15]
    clock.now += 15
    await replicas[0].check(principal)
    with pytest.raises(RateLimited):
        await replicas[1].check(principal)
    assert failures == []


async def test_redis_failure_fails_open_logs_once_and_counts(caplog, redis_pools):
    failures = []
    pools = redis_pools(timeout_s=0.5, backoff_s=0)
    store = RedisRateLimitStore(pools.connect("redis://127.0.0.1:1/0"), on_failure=lambda: failures.append(1))
    limiter = RateLimiter(GuardSettings(rate_limit_per_minute=1), store, clock=Clock())
    assert await _admitted(limiter, _principal(), 3) == 3
    assert len(failures) == 3
    warnings = [r for r in caplog.records if "rate-limit store unavailable" in r.getMessage()]
    assert len(warnings) == 1


async def test_a_stalled_redis_costs_one_timeout_then_is_skipped_until_the_backoff_ends(redis_pools):
    # A Redis that accepts connections but never answers: without a backoff every request
    # would wait the full timeout on every call for as long as the stall lasts.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        failures: list[int] = []
        pools = redis_pools(timeout_s=0.3, backoff_s=0.6)
        store = RedisRateLimitStore(
            pools.connect(f"redis://127.0.0.1:{port}/0"), on_failure=lambda: failures.append(1)
        )
        limiter = RateLimiter(GuardSettings(rate_limit_per_minute=1), store, clock=Clock())
        started = time.monotonic()
        assert await _admitted(limiter, _principal(), 1) == 1  # fails open after the timeout
        first = time.monotonic() - started
        started = time.monotonic()
        assert await _admitted(limiter, _principal(), 5) == 5  # backing off: no waiting
        skipped = time.monotonic() - started
        await asyncio.sleep(0.7)
        assert await _admitted(limiter, _principal(), 1) == 1  # tried again, failed again
    assert first >= 0.25
    assert skipped < 0.1
    assert len(failures) == 2
