"""What the rate limiter's and the quota's Redis stores share: a client, a timeout, failing open.

Each command runs under the store's timeout; a Redis error, a timeout or an unusable
value lets the request through (counted and logged once through ``FailOpen``), and a
store that just failed is left alone for its back-off.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import ClassVar, Self, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from glimpse.guard._failopen import FailOpen

__all__ = ["RedisGuardStore"]

T = TypeVar("T")


class RedisGuardStore:
    #: What the log says when the store goes away and when it is back.
    DOWN_MESSAGE: ClassVar[str]
    UP_MESSAGE: ClassVar[str]
    DEFAULT_PREFIX: ClassVar[str]

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str | None = None,
        timeout_s: float = 0.5,
        on_failure: Callable[[], None] | None = None,
        backoff_s: float = 2.0,
    ) -> None:
        self._client = client
        self._prefix = self.DEFAULT_PREFIX if prefix is None else prefix
        self._timeout_s = timeout_s
        self._health = FailOpen(self.DOWN_MESSAGE, self.UP_MESSAGE, on_failure, backoff_s=backoff_s)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        timeout_s: float = 0.5,
        on_failure: Callable[[], None] | None = None,
        backoff_s: float = 2.0,
    ) -> Self:
        client = aioredis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        return cls(client, timeout_s=timeout_s, on_failure=on_failure, backoff_s=backoff_s)

    async def _run(self, command: Callable[[], Awaitable[T]], fallback: T, *unusable: type[Exception]) -> T:
        """``command()``'s result, or ``fallback`` when the store fails (or backs off after failing)."""
        if not self._health.should_try():
            return fallback
        caught: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError, *unusable)
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await command()
        except caught as exc:
            self._health.failed(exc)
            return fallback
        self._health.recovered()
        return result

    @property
    def failures(self) -> int:
        return self._health.failures

    async def aclose(self) -> None:
        await self._client.aclose()
