"""RedisCache against a real redis-server: down, slow and back again."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from glimpse.cache import CachedResult, CacheUnavailable, RedisCache, ResultCache
from glimpse.config import RedisSettings
from glimpse.redis_pool import RedisPools

RESULT = CachedResult(
    text="a cat", chunks=("a", " cat"), finish_reason="stop", prompt_tokens=5, completion_tokens=2
)
TIMEOUT = 0.25
SLACK = 0.35  # a shared, busy CI machine may be slow to wake the loop


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@contextlib.asynccontextmanager
async def redis_cache(url: str, clock=time.monotonic, **settings) -> AsyncIterator[RedisCache]:
    """A cache on its own pool; ``cache.failures`` lists what reached the failure metric."""
    pools = RedisPools(RedisSettings(**({"timeout_s": TIMEOUT, "backoff_s": 5.0} | settings)))
    failures: list[int] = []
    cache = RedisCache(pools.connect(url), ttl_s=60, on_failure=lambda: failures.append(1), clock=clock)
    cache.failures = failures
    cache.clock = clock
    try:
        yield cache
    finally:
        await cache.close()
        await pools.aclose()


@pytest.fixture
async def cache(redis_server):
    async with redis_cache(redis_server.url, Clock()) as cache:
        yield cache


async def test_round_trip_with_ttl(cache, redis_server):
    assert await cache.get("k") is None
    await cache.set("k", RESULT)
    assert await cache.get("k") == RESULT
    raw = redis_server.client()
    assert 0 < raw.ttl("glimpse:cache:k") <= 60
    assert raw.get("glimpse:cache:k") == RESULT.to_bytes()


async def test_unreadable_entry_is_a_miss(cache, redis_server):
    redis_server.client().set("glimpse:cache:k", b"garbage")
    assert await cache.get("k") is None
    assert cache.available


async def test_killed_redis_fails_fast_then_short_circuits(cache, redis_server):
    await cache.set("k", RESULT)
    redis_server.stop()

    started = time.monotonic()
    with pytest.raises(CacheUnavailable):
        await cache.get("k")
    assert time.monotonic() - started < TIMEOUT + SLACK
    assert len(cache.failures) == 1
    assert not cache.available

    started = time.monotonic()
    for _ in range(5):
        with pytest.raises(CacheUnavailable, match="left alone"):
            await cache.get("k")
        with pytest.raises(CacheUnavailable, match="left alone"):
            await cache.set("k", RESULT)
    assert time.monotonic() - started < 0.1
    assert len(cache.failures) == 1  # refused without trying: not another failure


async def test_recovers_by_itself_after_the_backoff(cache, redis_server):
    redis_server.stop()
    with pytest.raises(CacheUnavailable):
        await cache.get("k")
    redis_server.start()  # same port, empty data
    with pytest.raises(CacheUnavailable, match="left alone"):
        await cache.get("k")  # still inside the back-off
    cache.clock.now += 5.0
    assert await cache.get("k") is None
    assert cache.available
    await cache.set("k", RESULT)
    assert await cache.get("k") == RESULT


async def test_failed_probe_reopens_the_circuit(cache, redis_server):
    redis_server.stop()
    with pytest.raises(CacheUnavailable):
        await cache.get("k")
    cache.clock.now += 5.0
    with pytest.raises(CacheUnavailable):
        await cache.get("k")  # the probe, Redis still down
    assert len(cache.failures) == 2
    with pytest.raises(CacheUnavailable, match="left alone"):
        await cache.get("k")


async def test_slow_redis_never_stalls_longer_than_the_timeout(cache, redis_server):
    await cache.set("k", RESULT)
    redis_server.pause()
    try:
        started = time.monotonic()
        with pytest.raises(CacheUnavailable, match="TimeoutError"):
            await cache.get("k")
        assert time.monotonic() - started < TIMEOUT + SLACK
        # Only one call probes a paused Redis after the back-off; the rest are refused at once.
        cache.clock.now += 5.0
        started = time.monotonic()
        results = await asyncio.gather(*(cache.get("k") for _ in range(5)), return_exceptions=True)
        assert time.monotonic() - started < TIMEOUT + SLACK
        assert all(isinstance(r, CacheUnavailable) for r in results)
        assert len(cache.failures) == 2
    finally:
        redis_server.resume()
    cache.clock.now += 5.0
    assert await cache.get("k") == RESULT


async def test_result_cache_over_a_dying_redis_counts_and_never_raises(cache, redis_server):
    events = []
    results = ResultCache(cache, on_event=events.append)
    await results.store("k", RESULT)
    assert await results.lookup("k") == RESULT
    redis_server.stop()
    assert await results.lookup("k") is None
    await results.store("k2", RESULT)
    assert events == ["stored", "hit", "error", "store_error"]
    assert (results.stats.hits, results.stats.errors, results.stats.store_errors) == (1, 1, 1)

    redis_server.start()
    cache.clock.now += 5.0
    assert await results.lookup("k") is None  # a fresh, empty Redis
    assert events[-1] == "miss"


async def test_real_backoff_without_an_injected_clock(redis_server):
    async with redis_cache(redis_server.url, backoff_s=0.3) as cache:
        redis_server.stop()
        with pytest.raises(CacheUnavailable):
            await cache.get("k")
        redis_server.start()
        deadline = time.monotonic() + 3
        while True:
            try:
                assert await cache.get("k") is None
                break
            except CacheUnavailable:
                assert time.monotonic() < deadline, "did not recover"
                await asyncio.sleep(0.05)
        assert cache.available


async def test_a_burst_beyond_the_pool_queues_instead_of_tripping(redis_server):
    async with redis_cache(redis_server.url, timeout_s=1.0, max_connections=4) as cache:
        await cache.set("k", RESULT)
        results = await asyncio.gather(*(cache.get("k") for _ in range(300)), return_exceptions=True)
        served = sum(r == RESULT for r in results)
        busy = [r for r in results if isinstance(r, CacheUnavailable)]
        assert served + len(busy) == 300
        assert all("no free connection" in str(r) for r in busy)
        assert served > 0
        assert cache.failures == []
        assert cache.available
