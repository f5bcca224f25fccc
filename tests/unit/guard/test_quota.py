import uuid
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from glimpse.config import GuardSettings
from glimpse.errors import RateLimited
from glimpse.guard.auth import Principal
from glimpse.guard.quota import MemoryQuotaStore, QuotaTracker, RedisQuotaStore, day_key

# 2025-06-15 22:00:00 UTC: two hours before the quota day rolls over.
START = datetime(2025, 6, 15, 22, tzinfo=UTC).timestamp()


class Clock:
    def __init__(self, now=START):
        self.now = now

    def __call__(self):
        return self.now


def _principal(client="key:a", quota=None):
    return Principal(client_id=client, name=client, token_quota_per_day=quota)


def test_day_key_is_the_utc_date():
    assert day_key(START) == "20250615"
    assert day_key(START + 2 * 3600) == "20250616"


async def test_zero_means_unlimited():
    tracker = QuotaTracker(GuardSettings(token_quota_per_day=0), clock=Clock())
    principal = _principal()
    for _ in range(10):
        await tracker.check(principal)
        await tracker.consume(principal, 1_000_000)


async def test_quota_refuses_once_used_up_until_midnight_utc():
    clock = Clock()
    tracker = QuotaTracker(GuardSettings(token_quota_per_day=100), clock=clock)
    principal = _principal()
    await tracker.check(principal)
    await tracker.consume(principal, 60)
    await tracker.check(principal)  # 60 < 100: admitted; this request may overshoot
    await tracker.consume(principal, 60)
    clock.now += 1800.4
    with pytest.raises(RateLimited) as info:
        await tracker.check(principal)
    assert info.value.status_code == 429
    assert info.value.retry_after == 5400  # 22:30 -> 00:00 UTC, rounded up
    assert "100 tokens" in info.value.message
    clock.now = datetime(2025, 6, 16, tzinfo=UTC).timestamp()
    await tracker.check(principal)  # a new day, a new quota


async def test_exactly_at_the_quota_is_refused():
    tracker = QuotaTracker(GuardSettings(token_quota_per_day=50), clock=Clock())
    principal = _principal()
    await tracker.consume(principal, 50)
    with pytest.raises(RateLimited):
        await tracker.check(principal)


async def test_clients_are_separate_and_principal_overrides_the_default():
    tracker = QuotaTracker(GuardSettings(token_quota_per_day=10), clock=Clock())
    await tracker.consume(_principal("key:a"), 10)
    with pytest.raises(RateLimited):
        await tracker.check(_principal("key:a"))
    await tracker.check(_principal("key:b"))
    vip = _principal("key:vip", quota=1000)
    await tracker.consume(vip, 500)
    await tracker.check(vip)
    unlimited = _principal("key:free", quota=0)
    await tracker.consume(unlimited, 10**9)
    await tracker.check(unlimited)
    assert tracker.quota_for(_principal()) == 10
    assert tracker.quota_for(vip) == 1000


async def test_memory_store_forgets_past_days():
    store = MemoryQuotaStore()
    await store.add("a", "20250615", 5)
    await store.add("a", "20250616", 7)
    assert await store.usage("a", "20250616") == 7
    assert await store.usage("a", "20250615") == 0  # yesterday was dropped, not kept forever
    assert len(store._used) == 1


@pytest.fixture
def failures() -> list[int]:
    """One entry per failure the stores reported (what the app counts in its metric)."""
    return []


@pytest.fixture
def redis_stores(redis_url, redis_pools, failures):
    """Two replicas' stores, each on its own pool, sharing one Redis."""
    prefix = f"test:{uuid.uuid4().hex}:"
    return [
        RedisQuotaStore(
            redis_pools().connect(redis_url), prefix=prefix, on_failure=lambda: failures.append(1)
        )
        for _ in range(2)
    ]


async def test_two_replicas_share_one_quota_through_redis(redis_stores, redis_url, failures):
    clock = Clock()
    replicas = [QuotaTracker(GuardSettings(token_quota_per_day=100), s, clock=clock) for s in redis_stores]
    principal = _principal("key:shared")
    await replicas[0].check(principal)
    await replicas[0].consume(principal, 70)
    await replicas[1].check(principal)  # replica 1 sees 70 < 100
    await replicas[1].consume(principal, 40)
    for replica in replicas:
        with pytest.raises(RateLimited) as info:
            await replica.check(principal)
        assert info.value.retry_after == 7200
    await replicas[1].check(_principal("key:other"))
    assert failures == []

    client = aioredis.Redis.from_url(redis_url)
    try:
        key = f"{redis_stores[0]._prefix}key:shared:20250615"
        assert int(await client.get(key)) == 110
        assert 2 * 86_400 - 5 <= await client.ttl(key) <= 2 * 86_400
    finally:
        await client.aclose()

    clock.now += 2 * 3600  # the next UTC day has its own key
    await replicas[0].check(principal)


async def test_redis_failure_fails_open_logs_once_and_counts(caplog, redis_pools, failures):
    pools = redis_pools(timeout_s=0.5, backoff_s=0)
    store = RedisQuotaStore(pools.connect("redis://127.0.0.1:1/0"), on_failure=lambda: failures.append(1))
    tracker = QuotaTracker(GuardSettings(token_quota_per_day=1), store, clock=Clock())
    principal = _principal()
    for _ in range(2):
        await tracker.check(principal)
        await tracker.consume(principal, 10)
    assert len(failures) == 4
    assert sum("quota store unavailable" in r.getMessage() for r in caplog.records) == 1


async def test_a_value_that_is_not_a_count_fails_open(redis_stores, redis_url, failures):
    store = redis_stores[0]
    client = aioredis.Redis.from_url(redis_url)
    try:
        await client.set(f"{store._prefix}key:odd:20250615", "not a number")
    finally:
        await client.aclose()
    assert await store.usage("key:odd", "20250615") == 0  # let through, not a 500
    assert failures == [1]
