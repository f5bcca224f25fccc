"""Per-client request rate limits: a token bucket per client id.

A bucket holds up to ``limit`` requests and refills at ``limit`` per minute, so a
client may burst up to its limit and then proceeds at the steady rate. The
bucket lives in process by default, or in Redis (one Lua script, atomic) when
several replicas must enforce one limit. Redis trouble never fails a request:
the limiter lets it through, logs once per outage and counts the failure.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from glimpse.config import GuardSettings
from glimpse.errors import RateLimited
from glimpse.guard._redis_store import RedisGuardStore
from glimpse.guard.auth import Principal
from glimpse.redis_pool import RedisConnection

__all__ = ["MemoryRateLimitStore", "RateLimitStore", "RateLimiter", "RedisRateLimitStore"]


_WINDOW_S = 60.0


class RateLimitStore(Protocol):
    async def acquire(self, key: str, limit_per_minute: int, now: float) -> float:
        """Take one request from ``key``'s bucket: 0 if admitted, else seconds to wait."""
        ...


def _refill(tokens: float, last: float, limit: int, now: float) -> tuple[float, float]:
    if now > last:
        tokens = min(float(limit), tokens + (now - last) * limit / _WINDOW_S)
        last = now
    return tokens, last


class MemoryRateLimitStore:
    """Buckets in this process; the least recently seen clients are forgotten first."""

    def __init__(self, max_clients: int = 100_000) -> None:
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._max_clients = max_clients

    async def acquire(self, key: str, limit_per_minute: int, now: float) -> float:
        tokens, last = self._buckets.pop(key, (float(limit_per_minute), now))
        tokens, last = _refill(tokens, last, limit_per_minute, now)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) * _WINDOW_S / limit_per_minute
        self._buckets[key] = (tokens, last)
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
        return wait


# Same arithmetic as MemoryRateLimitStore, run atomically inside Redis. Time comes
# from the caller (so tests can drive it); a replica whose clock lags never
# refills a bucket backwards. Floats are returned as strings: Redis truncates
# Lua numbers to integers.
_BUCKET_LUA = """
local limit = tonumber(ARGV[1])
local now = tonumber(ARGV[2])
local window = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local last = tonumber(state[2])
if tokens == nil or last == nil then
  tokens = limit
  last = now
end
if now > last then
  tokens = math.min(limit, tokens + (now - last) * limit / window)
  last = now
end
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = (1 - tokens) * window / limit
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(last))
redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000) + 1000)
return tostring(wait)
"""


class RedisRateLimitStore(RedisGuardStore):
    """Buckets in Redis, shared by every replica that points at the same server."""

    DOWN_MESSAGE = "rate-limit store unavailable; letting requests through"
    UP_MESSAGE = "rate-limit store reachable again; limits are enforced"
    DEFAULT_PREFIX = "glimpse:ratelimit:"

    def __init__(
        self,
        connection: RedisConnection,
        *,
        prefix: str | None = None,
        on_failure: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(connection, prefix=prefix, on_failure=on_failure, clock=clock)
        self._script = connection.client.register_script(_BUCKET_LUA)

    async def acquire(self, key: str, limit_per_minute: int, now: float) -> float:
        async def take() -> float:
            raw = await self._script(keys=[self._prefix + key], args=[limit_per_minute, now, _WINDOW_S])
            return float(raw.decode() if isinstance(raw, bytes) else raw)

        return await self._run(take, 0.0)


class RateLimiter:
    """Applies each principal's limit (its own, else the server default; 0 = none)."""

    def __init__(
        self,
        settings: GuardSettings,
        store: RateLimitStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._default = settings.rate_limit_per_minute
        self._store: RateLimitStore = store if store is not None else MemoryRateLimitStore()
        self._clock = clock

    async def check(self, principal: Principal) -> None:
        limit = principal.rate_limit_per_minute
        if limit is None:
            limit = self._default
        if limit <= 0:
            return
        wait = await self._store.acquire(principal.client_id, limit, self._clock())
        if wait > 0:
            retry_after = max(1, math.ceil(wait))
            raise RateLimited(
                f"Rate limit of {limit} requests per minute exceeded; retry in {retry_after} s.",
                retry_after=retry_after,
            )
