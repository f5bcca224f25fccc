"""The one object the API uses for caching: lookups, stores, single-flight, counts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from glimpse.cache.backend import CacheBackend, CacheUnavailable
from glimpse.cache.singleflight import SingleFlight
from glimpse.cache.value import CachedResult

__all__ = ["CacheEvent", "CacheStats", "ResultCache"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class CacheEvent(StrEnum):
    """What the cache reports to ``on_event`` (``obs.Metrics.observe_cache`` takes these)."""

    HIT = "hit"  # lookup found an entry
    MISS = "miss"  # lookup found none
    ERROR = "error"  # lookup could not ask the backend (down, slow, circuit open)
    STORED = "stored"
    STORE_ERROR = "store_error"
    COALESCED = "coalesced"  # a request joined an identical one in flight


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    errors: int = 0
    stored: int = 0
    store_errors: int = 0
    coalesced: int = 0


_STAT_FIELD = {
    CacheEvent.HIT: "hits",
    CacheEvent.MISS: "misses",
    CacheEvent.ERROR: "errors",
    CacheEvent.STORED: "stored",
    CacheEvent.STORE_ERROR: "store_errors",
    CacheEvent.COALESCED: "coalesced",
}


class ResultCache:
    """Caching that never fails a request: a backend outage is counted and treated as a miss.

    Only answers that ended normally (``finish_reason`` in ``storable``) are
    stored; a cancelled or failed generation is not an answer.
    """

    def __init__(
        self,
        backend: CacheBackend,
        on_event: Callable[[CacheEvent], None] | None = None,
        *,
        storable: frozenset[str] = frozenset({"stop", "length"}),
    ) -> None:
        self.backend = backend
        self.single_flight = SingleFlight()
        self.stats = CacheStats()
        self._on_event = on_event
        self._storable = storable

    async def lookup(self, key: str) -> CachedResult | None:
        try:
            result = await self.backend.get(key)
        except CacheUnavailable:
            self._record(CacheEvent.ERROR)
            return None
        self._record(CacheEvent.MISS if result is None else CacheEvent.HIT)
        return result

    async def store(self, key: str, result: CachedResult) -> None:
        if result.finish_reason not in self._storable:
            return
        try:
            await self.backend.set(key, result)
        except CacheUnavailable:
            self._record(CacheEvent.STORE_ERROR)
            return
        self._record(CacheEvent.STORED)

    async def get_or_compute(
        self, key: str, compute: Callable[[], Awaitable[CachedResult]]
    ) -> tuple[CachedResult, CacheEvent]:
        """The cached answer, or one computed once for all identical callers, then stored.

        Returns how it was served: ``HIT``, ``COALESCED`` (joined another caller's
        computation) or ``MISS`` (this caller's computation). Storing happens
        inside the shared computation, so no caller can slip in between the
        answer and its entry and compute it again.
        """
        cached = await self.lookup(key)
        if cached is not None:
            return cached, CacheEvent.HIT
        started = False

        async def compute_and_store() -> CachedResult:
            nonlocal started
            started = True
            result = await compute()
            await self.store(key, result)
            return result

        result = await self.single_flight.run(key, compute_and_store)
        if started:
            return result, CacheEvent.MISS
        self._record(CacheEvent.COALESCED)
        return result, CacheEvent.COALESCED

    @asynccontextmanager
    async def stream(
        self,
        key: str,
        open_source: Callable[[], AsyncIterator[T]],
        to_result: Callable[[Sequence[T]], CachedResult | None],
    ) -> AsyncIterator[tuple[AsyncIterator[T], bool]]:
        """Share a live token stream among identical requests, then store the answer.

        Use after a missed ``lookup``. Yields ``(items, shared)``; every caller
        sees all items from the first. ``to_result`` turns the finished items
        into the entry to store (``None`` to store nothing).
        """

        async def on_complete(items: Sequence[T]) -> None:
            result = to_result(items)
            if result is not None:
                await self.store(key, result)

        async with self.single_flight.stream(key, open_source, on_complete) as (items, shared):
            if shared:
                self._record(CacheEvent.COALESCED)
            yield items, shared

    async def close(self) -> None:
        await self.backend.close()

    def _record(self, event: CacheEvent) -> None:
        field_name = _STAT_FIELD[event]
        setattr(self.stats, field_name, getattr(self.stats, field_name) + 1)
        if self._on_event is not None:
            try:
                self._on_event(event)
            except Exception:
                logger.exception("cache event hook failed")
