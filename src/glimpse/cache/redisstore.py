"""Redis backend, shared by replicas, that can never fail or stall a request."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from glimpse.cache.backend import CacheUnavailable
from glimpse.cache.value import CachedResult
from glimpse.redis_pool import FailOpenRedis, RedisConnection, RedisUnavailable

__all__ = ["RedisCache"]

logger = logging.getLogger(__name__)


class RedisCache:
    """Entries in Redis with a TTL, behind ``FailOpenRedis``'s deadline and back-off.

    Whatever keeps Redis from answering in time (down, slow, every connection busy, or
    left alone after a failure) is ``CacheUnavailable``: the request is served uncached.
    """

    def __init__(
        self,
        connection: RedisConnection,
        ttl_s: int,
        *,
        prefix: str = "glimpse:cache:",
        on_failure: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = FailOpenRedis(
            connection,
            down_message="redis cache unavailable; serving without it",
            up_message="redis cache is reachable again",
            on_failure=on_failure,
            clock=clock,
        )
        self._ttl_s = ttl_s
        self._prefix = prefix

    @property
    def available(self) -> bool:
        """False while Redis is left alone after a failure."""
        return self._redis.available

    async def get(self, key: str) -> CachedResult | None:
        client = self._redis.client
        try:
            raw = await self._redis.call(lambda: client.get(self._prefix + key))
        except RedisUnavailable as exc:
            raise CacheUnavailable(str(exc)) from exc
        if raw is None:
            return None
        try:
            if not isinstance(raw, bytes):  # the client never decodes responses
                raise ValueError(f"{type(raw).__name__}, not bytes")
            return CachedResult.from_bytes(raw)
        except ValueError as exc:
            logger.warning("ignoring unreadable cache entry %s: %s", key[:16], exc)
            return None

    async def set(self, key: str, value: CachedResult) -> None:
        data = value.to_bytes()
        client = self._redis.client
        try:
            await self._redis.call(lambda: client.set(self._prefix + key, data, ex=self._ttl_s))
        except RedisUnavailable as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def close(self) -> None:
        """Nothing to release: the connection belongs to the process's ``RedisPools``."""
