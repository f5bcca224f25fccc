"""Redis backend, shared by replicas, that can never fail or stall a request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from glimpse.cache.backend import CacheUnavailable
from glimpse.cache.value import CachedResult

__all__ = ["RedisCache"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RedisCache:
    """Entries in Redis with a TTL, behind a deadline and a circuit breaker.

    Every command runs under ``timeout_s``. The first failure (error or timeout)
    opens the circuit: for ``backoff_s`` every call fails at once with
    ``CacheUnavailable`` instead of paying the timeout again. After that one call
    at a time probes Redis; the first success closes the circuit, so the cache
    comes back by itself when Redis does. redis-py's own retries are turned off
    because they would multiply the time a request can spend here.

    At most ``max_connections`` commands run at once; the others queue for a
    slot within the same deadline. Running out of time while queued means
    *we* are busy, not that Redis is down, so it is refused (and counted in
    ``busy``) without opening the circuit.
    """

    def __init__(
        self,
        url: str,
        ttl_s: int,
        *,
        timeout_s: float = 0.25,
        backoff_s: float = 2.0,
        prefix: str = "glimpse:cache:",
        max_connections: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client: Redis = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
            max_connections=max_connections,
        )
        self._slots = asyncio.Semaphore(max_connections)
        self._ttl_s = ttl_s
        self._timeout_s = timeout_s
        self._backoff_s = backoff_s
        self._prefix = prefix
        self._clock = clock
        self._open_until: float | None = None  # None: circuit closed
        self._probing = False
        #: Commands that failed or timed out.
        self.errors = 0
        #: Calls refused without trying because the circuit was open.
        self.short_circuited = 0
        #: Calls that ran out of time waiting for a free connection.
        self.busy = 0

    @property
    def available(self) -> bool:
        """False while the circuit is open (Redis recently failed)."""
        return self._open_until is None

    async def get(self, key: str) -> CachedResult | None:
        raw = await self._call(lambda: self._client.get(self._prefix + key))
        if raw is None:
            return None
        try:
            return CachedResult.from_bytes(raw)
        except ValueError as exc:
            logger.warning("ignoring unreadable cache entry %s: %s", key[:16], exc)
            return None

    async def set(self, key: str, value: CachedResult) -> None:
        data = value.to_bytes()
        await self._call(lambda: self._client.set(self._prefix + key, data, ex=self._ttl_s))

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._client.aclose()
        except (RedisError, OSError, TimeoutError) as exc:
            logger.debug("closing the Redis client failed: %s", exc)

    async def _call(self, command: Callable[[], Awaitable[Any]]) -> Any:
        probe = self._admit()
        sent = False
        try:
            async with asyncio.timeout(self._timeout_s), self._slots:
                sent = True
                result = await command()
        except (RedisError, OSError, TimeoutError) as exc:
            if not sent:
                self.busy += 1
                raise CacheUnavailable("redis: no free connection in time") from exc
            self._trip(exc)
            raise CacheUnavailable(f"redis: {type(exc).__name__}") from exc
        finally:
            if probe:
                self._probing = False
        if self._open_until is not None:
            logger.info("redis cache is reachable again")
            self._open_until = None
        return result

    def _admit(self) -> bool:
        """Let the call through (returning whether it is the probe) or refuse it."""
        if self._open_until is None:
            return False
        if self._probing or self._clock() < self._open_until:
            self.short_circuited += 1
            raise CacheUnavailable("redis circuit open")
        self._probing = True
        return True

    def _trip(self, exc: BaseException) -> None:
        self.errors += 1
        if self._open_until is None:
            logger.warning(
                "redis cache unavailable (%s: %s); serving without it for %.1fs",
                type(exc).__name__,
                exc,
                self._backoff_s,
            )
        self._open_until = self._clock() + self._backoff_s
