"""The one fail-open Redis helper the cache and the guard's stores share."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from glimpse.config import RedisSettings
from glimpse.redis_pool import FailOpenRedis, RedisConnection, RedisPools, RedisUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _use(
    settings: RedisSettings | None = None, clock: Clock | None = None
) -> tuple[FailOpenRedis, list[int]]:
    failures: list[int] = []
    connection = RedisConnection("redis://127.0.0.1:1/0", settings or RedisSettings(backoff_s=5.0))
    redis = FailOpenRedis(
        connection,
        down_message="test store down",
        up_message="test store up",
        on_failure=lambda: failures.append(1),
        clock=clock or Clock(),
    )
    return redis, failures


async def _fail() -> None:
    raise RedisConnectionError("refused")


async def _ok() -> str:
    return "ok"


async def test_one_connection_per_url_shared_by_every_use():
    pools = RedisPools(RedisSettings())
    try:
        first = pools.connect("redis://127.0.0.1:6379/0")
        assert pools.connect("redis://127.0.0.1:6379/0") is first
        other = pools.connect("redis://127.0.0.1:6379/1")
        assert other is not first
        assert other.client is not first.client
    finally:
        await pools.aclose()
    assert pools.connect("redis://127.0.0.1:6379/0") is not first  # closed ones are not handed out
    await pools.aclose()


def test_the_connection_takes_its_bounds_from_settings():
    settings = RedisSettings(timeout_s=0.7, max_connections=5)
    connection = RedisConnection("redis://127.0.0.1:6379/0", settings)
    kwargs = connection.client.connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 0.7
    assert kwargs["socket_connect_timeout"] == 0.7
    assert connection.client.connection_pool.max_connections == 5


async def test_a_failure_is_counted_logged_once_and_backs_off(caplog):
    caplog.set_level(logging.INFO, logger="glimpse.redis_pool")
    clock = Clock()
    redis, failures = _use(clock=clock)
    with pytest.raises(RedisUnavailable, match="ConnectionError"):
        await redis.call(_fail)
    assert failures == [1]
    assert not redis.available

    ran: list[int] = []

    async def counted() -> str:
        ran.append(1)
        return "ok"

    for _ in range(3):
        with pytest.raises(RedisUnavailable, match="left alone"):
            await redis.call(counted)
    assert ran == []  # inside the back-off nothing is sent
    assert failures == [1]

    clock.now += 5.0
    assert await redis.call(counted) == "ok"
    assert redis.available
    messages = [r.getMessage() for r in caplog.records]
    assert sum("test store down" in m for m in messages) == 1
    assert sum("test store up" in m for m in messages) == 1


async def test_after_the_backoff_only_one_call_probes():
    clock = Clock()
    redis, failures = _use(clock=clock)
    with pytest.raises(RedisUnavailable):
        await redis.call(_fail)
    clock.now += 5.0
    release = asyncio.Event()

    async def slow() -> str:
        await release.wait()
        return "ok"

    probe = asyncio.create_task(redis.call(slow))
    await asyncio.sleep(0)
    with pytest.raises(RedisUnavailable, match="left alone"):
        await redis.call(_ok)  # the probe is still out
    release.set()
    assert await probe == "ok"
    assert await redis.call(_ok) == "ok"
    assert failures == [1]


async def test_a_stalled_command_fails_after_the_settings_timeout():
    redis, failures = _use(RedisSettings(timeout_s=0.1, backoff_s=5.0))

    async def stall() -> None:
        await asyncio.sleep(10)

    started = time.monotonic()
    with pytest.raises(RedisUnavailable, match="TimeoutError"):
        await redis.call(stall)
    assert time.monotonic() - started < 1.0
    assert failures == [1]


async def test_an_unusable_answer_counts_as_a_failure():
    redis, failures = _use()

    async def not_a_number() -> int:
        return int("x")

    with pytest.raises(RedisUnavailable, match="ValueError"):
        await redis.call(not_a_number, ValueError)
    assert failures == [1]


async def test_an_unexpected_error_is_not_swallowed():
    redis, failures = _use()

    async def bug() -> None:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await redis.call(bug)
    assert failures == []
    assert redis.available


async def test_waiting_for_a_busy_pool_is_not_a_redis_failure():
    connection = RedisConnection("redis://127.0.0.1:1/0", RedisSettings(timeout_s=0.1, max_connections=1))
    failures: list[int] = []
    redis = FailOpenRedis(connection, down_message="d", up_message="u", on_failure=lambda: failures.append(1))
    async with connection.slots:  # another use holds the only connection
        with pytest.raises(RedisUnavailable, match="no free connection"):
            await redis.call(_ok)
    assert failures == []
    assert redis.available
    assert await redis.call(_ok) == "ok"


async def test_uses_of_one_url_keep_their_own_outage_state():
    pools = RedisPools(RedisSettings(backoff_s=5.0))
    try:
        connection = pools.connect("redis://127.0.0.1:1/0")
        cache = FailOpenRedis(connection, down_message="a down", up_message="a up")
        limiter = FailOpenRedis(connection, down_message="b down", up_message="b up")
        assert cache.client is limiter.client
        with pytest.raises(RedisUnavailable):
            await cache.call(_fail)
        assert not cache.available
        assert limiter.available
        assert await limiter.call(_ok) == "ok"
    finally:
        await pools.aclose()
