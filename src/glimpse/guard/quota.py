"""Per-client token quotas: prompt + output tokens per UTC day.

A request is admitted while the client's usage for today is below its quota;
what it costs is only known when it finishes, so ``consume`` adds it afterwards
and one request may overshoot the quota (the next one is refused). Usage lives
in process by default, or in Redis (``INCRBY`` on one key per client and day,
expiring after two days) so several replicas enforce one quota. Redis trouble
never fails a request: the tracker lets it through, logs once per outage and
counts the failure.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

from glimpse.config import GuardSettings
from glimpse.errors import RateLimited
from glimpse.guard._redis_store import RedisGuardStore
from glimpse.guard.auth import Principal

__all__ = ["MemoryQuotaStore", "QuotaStore", "QuotaTracker", "RedisQuotaStore", "day_key"]


_DAY_S = 86_400
_KEY_TTL_S = 2 * _DAY_S


def day_key(now: float) -> str:
    """The UTC day ``now`` falls in, as ``YYYYMMDD``."""
    return time.strftime("%Y%m%d", time.gmtime(now))


def seconds_until_next_day(now: float) -> int:
    return max(1, math.ceil(_DAY_S - now % _DAY_S))


class QuotaStore(Protocol):
    async def usage(self, client_id: str, day: str) -> int:
        """Tokens ``client_id`` used on ``day`` (0 when unknown or unreachable)."""
        ...

    async def add(self, client_id: str, day: str, tokens: int) -> None: ...


class MemoryQuotaStore:
    """Today's usage per client in this process; other days are forgotten as soon as one starts."""

    def __init__(self) -> None:
        self._day = ""
        self._used: dict[str, int] = {}

    def _roll(self, day: str) -> None:
        if day > self._day:
            self._day = day
            self._used.clear()

    async def usage(self, client_id: str, day: str) -> int:
        self._roll(day)
        return self._used.get(client_id, 0) if day == self._day else 0

    async def add(self, client_id: str, day: str, tokens: int) -> None:
        self._roll(day)
        if day == self._day:
            self._used[client_id] = self._used.get(client_id, 0) + tokens


class RedisQuotaStore(RedisGuardStore):
    """Usage in Redis under ``<prefix><client>:<YYYYMMDD>``, shared by every replica."""

    DOWN_MESSAGE = "quota store unavailable; token quotas are not enforced"
    UP_MESSAGE = "quota store reachable again; token quotas are enforced"
    DEFAULT_PREFIX = "glimpse:quota:"

    def _key(self, client_id: str, day: str) -> str:
        return f"{self._prefix}{client_id}:{day}"

    async def usage(self, client_id: str, day: str) -> int:
        async def read() -> int:
            raw = await self._client.get(self._key(client_id, day))
            return int(raw) if raw is not None else 0

        return await self._run(read, 0, ValueError)  # ValueError: not a number there

    async def add(self, client_id: str, day: str, tokens: int) -> None:
        async def write() -> None:
            key = self._key(client_id, day)
            async with self._client.pipeline(transaction=True) as pipe:
                # Pipelined commands only queue (typed as awaitables); execute() runs them atomically.
                _ = pipe.incrby(key, tokens)
                _ = pipe.expire(key, _KEY_TTL_S)
                await pipe.execute()

        await self._run(write, None)


class QuotaTracker:
    """Applies each principal's daily token quota (its own, else the server default; 0 = none)."""

    def __init__(
        self,
        settings: GuardSettings,
        store: QuotaStore | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._default = settings.token_quota_per_day
        self._store: QuotaStore = store if store is not None else MemoryQuotaStore()
        self._clock = clock

    def quota_for(self, principal: Principal) -> int:
        quota = principal.token_quota_per_day
        return self._default if quota is None else quota

    async def check(self, principal: Principal) -> None:
        """``RateLimited`` (429, retry at the next UTC midnight) once today's quota is used up."""
        quota = self.quota_for(principal)
        if quota <= 0:
            return
        now = self._clock()
        used = await self._store.usage(principal.client_id, day_key(now))
        if used >= quota:
            retry_after = seconds_until_next_day(now)
            raise RateLimited(
                f"Daily token quota of {quota} tokens used up; it resets at 00:00 UTC (in {retry_after} s).",
                retry_after=retry_after,
            )

    async def consume(self, principal: Principal, tokens: int) -> None:
        """Add a finished request's tokens to today's usage (nothing when the client is unlimited)."""
        if tokens <= 0 or self.quota_for(principal) <= 0:
            return
        await self._store.add(principal.client_id, day_key(self._clock()), tokens)
