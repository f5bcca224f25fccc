"""Redis that can never fail or stall a request, for the result cache and the guard's stores.

Redis is an optimisation (the cache) or a shared counter (rate limits, quotas): when it
fails, Glimpse serves without it rather than failing requests. So every command runs under
``RedisSettings.timeout_s``; the first failure makes that use leave Redis alone for
``backoff_s``, after which one call at a time probes it and the first success ends the
outage, so each use comes back by itself when Redis does. redis-py's own retries are off
because they would multiply the time a request can spend here.

One client, one connection pool and one bound on commands in flight per URL: the cache,
the rate limiter and the quota store of a process share them instead of opening three
pools to one server. Each use keeps its own outage state, log lines and failure count.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from glimpse.config import RedisSettings

__all__ = ["FailOpenRedis", "RedisConnection", "RedisPools", "RedisUnavailable"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RedisUnavailable(Exception):
    """Redis failed or timed out, no connection came free in time, or it is being left alone."""


class RedisConnection:
    """One URL's client and its bound on commands in flight, shared by every use of the URL.

    At most ``max_connections`` commands run at once; the others queue for a slot within
    their own deadline, so a burst waits instead of opening connections without end.
    """

    def __init__(self, url: str, settings: RedisSettings) -> None:
        self.settings = settings
        self.client: Redis = Redis.from_url(
            url,
            socket_timeout=settings.timeout_s,
            socket_connect_timeout=settings.timeout_s,
            retry=Retry(NoBackoff(), 0),
            max_connections=settings.max_connections,
        )
        self.slots = asyncio.Semaphore(settings.max_connections)

    async def aclose(self) -> None:
        """Close the pool, never waiting on a stalled Redis longer than one command may."""
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                await self.client.aclose()
        except (RedisError, OSError, TimeoutError) as exc:
            logger.debug("closing the Redis client failed: %s", exc)


class RedisPools:
    """The process's Redis connections, one per URL, closed together at shutdown."""

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._by_url: dict[str, RedisConnection] = {}

    def connect(self, url: str) -> RedisConnection:
        """The connection to ``url``, made on first use and shared after that."""
        connection = self._by_url.get(url)
        if connection is None:
            connection = self._by_url[url] = RedisConnection(url, self._settings)
        return connection

    async def aclose(self) -> None:
        connections, self._by_url = list(self._by_url.values()), {}
        for connection in connections:
            await connection.aclose()


class FailOpenRedis:
    """One use of a shared Redis connection: a deadline per command and a back-off after failures.

    ``call`` returns the command's result or raises ``RedisUnavailable``; the caller decides
    what serving without Redis means (a cache miss, a request let through). Each failure is
    passed to ``on_failure`` (a metric); each outage is logged once, down and up.
    """

    def __init__(
        self,
        connection: RedisConnection,
        *,
        down_message: str,
        up_message: str,
        on_failure: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connection = connection
        self._timeout_s = connection.settings.timeout_s
        self._backoff_s = connection.settings.backoff_s
        self._down = down_message
        self._up = up_message
        self._on_failure = on_failure
        self._clock = clock
        self._open_until: float | None = None  # None: Redis is in use
        self._probing = False

    @property
    def client(self) -> Redis:
        return self._connection.client

    @property
    def available(self) -> bool:
        """False from a failure until a call succeeds again."""
        return self._open_until is None

    async def call(self, command: Callable[[], Awaitable[T]], *unusable: type[Exception]) -> T:
        """``command()``'s result; ``RedisUnavailable`` when Redis fails, is busy or is left alone.

        ``unusable``: exceptions that mean Redis answered with something unusable (a value that
        is not a number); they count as a failure like an error does.
        """
        probe = self._admit()
        caught: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError, *unusable)
        sent = False
        try:
            async with asyncio.timeout(self._timeout_s), self._connection.slots:
                sent = True
                result = await command()
        except caught as exc:
            if not sent:
                # Out of time while queued for a slot: we are busy, Redis is not down.
                raise RedisUnavailable("redis: no free connection in time") from exc
            self._failed(exc)
            raise RedisUnavailable(f"redis: {type(exc).__name__}") from exc
        finally:
            if probe:
                self._probing = False
        if self._open_until is not None:
            self._open_until = None
            logger.info("%s", self._up)
        return result

    def _admit(self) -> bool:
        """Let the call through (returning whether it is the probe) or refuse it at once."""
        if self._open_until is None:
            return False
        if self._probing or self._clock() < self._open_until:
            raise RedisUnavailable("redis left alone after a failure")
        self._probing = True
        return True

    def _failed(self, exc: BaseException) -> None:
        if self._on_failure is not None:
            self._on_failure()
        if self._open_until is None:
            logger.warning(
                "%s (%s: %s); trying again in %.1f s", self._down, type(exc).__name__, exc, self._backoff_s
            )
        self._open_until = self._clock() + self._backoff_s
