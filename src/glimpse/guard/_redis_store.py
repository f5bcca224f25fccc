"""What the rate limiter's and the quota's Redis stores share: failing open.

Each command goes through ``FailOpenRedis`` (deadline, back-off, failure count); when it
cannot answer, or answers with an unusable value, the store returns its fallback and the
request goes through unchecked.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import ClassVar, TypeVar

from glimpse.redis_pool import FailOpenRedis, RedisConnection, RedisUnavailable

__all__ = ["RedisGuardStore"]

T = TypeVar("T")


class RedisGuardStore:
    #: What the log says when the store goes away and when it is back.
    DOWN_MESSAGE: ClassVar[str]
    UP_MESSAGE: ClassVar[str]
    DEFAULT_PREFIX: ClassVar[str]

    def __init__(
        self,
        connection: RedisConnection,
        *,
        prefix: str | None = None,
        on_failure: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = connection.client
        self._prefix = self.DEFAULT_PREFIX if prefix is None else prefix
        self._redis = FailOpenRedis(
            connection,
            down_message=self.DOWN_MESSAGE,
            up_message=self.UP_MESSAGE,
            on_failure=on_failure,
            clock=clock,
        )

    async def _run(self, command: Callable[[], Awaitable[T]], fallback: T, *unusable: type[Exception]) -> T:
        """``command()``'s result, or ``fallback`` when Redis cannot give a usable one in time."""
        try:
            return await self._redis.call(command, *unusable)
        except RedisUnavailable:
            return fallback
