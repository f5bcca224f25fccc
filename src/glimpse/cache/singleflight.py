"""Identical requests in flight share one computation.

The computation belongs to the flight, not to whichever caller started it: it
runs in its own task and is cancelled only when every caller has gone. So a
leader whose client disconnects does not take the followers' answer with it,
and nobody can be left waiting on a computation that no one runs. If the
computation fails, every caller gets that exception (the same request would
most likely fail again; retrying is the client's call).

The task copies the context of the caller that started it, so logs written by
the computation carry the first caller's request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, cast

__all__ = ["SingleFlight"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(slots=True, eq=False)
class _Call(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0


@dataclass(slots=True, eq=False)
class _Broadcast(Generic[T]):
    """Items of one source, kept so a subscriber who joins late replays them all."""

    items: list[T] = field(default_factory=list)
    finished: bool = False
    error: BaseException | None = None
    subscribers: int = 0
    task: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()

    async def follow(self) -> AsyncGenerator[T, None]:
        index = 0
        while True:
            changed = self.changed
            while index < len(self.items):
                yield self.items[index]
                index += 1
            if self.error is not None:
                raise self.error
            if self.finished:
                return
            await changed.wait()


class SingleFlight:
    """Coalesces concurrent calls with the same key (``run``, or ``stream`` for token streams)."""

    def __init__(self) -> None:
        self._calls: dict[str, _Call[Any]] = {}
        self._streams: dict[str, _Broadcast[Any]] = {}
        #: Callers that joined a computation someone else started.
        self.coalesced = 0

    def in_flight(self, key: str) -> bool:
        return key in self._calls or key in self._streams

    async def run(self, key: str, compute: Callable[[], Awaitable[T]]) -> T:
        """Result of ``compute()``, run once for all concurrent callers of ``key``."""
        call = self._calls.get(key)
        if call is None:
            call = _Call(asyncio.create_task(_invoke(compute)))
            self._calls[key] = call
            call.task.add_done_callback(functools.partial(self._call_done, key, call))
        else:
            self.coalesced += 1
        call.waiters += 1
        try:
            return cast("T", await asyncio.shield(call.task))
        finally:
            call.waiters -= 1
            if call.waiters == 0 and not call.task.done():
                self._forget_call(key, call)
                call.task.cancel()

    @contextlib.asynccontextmanager
    async def stream(
        self,
        key: str,
        open_source: Callable[[], AsyncIterator[T]],
        on_complete: Callable[[Sequence[T]], Awaitable[None]] | None = None,
    ) -> AsyncIterator[tuple[AsyncIterator[T], bool]]:
        """Share one source among concurrent subscribers of ``key``.

        Yields ``(items, shared)``: every subscriber iterates all items from the
        first, live, and ``shared`` tells whether someone else started the source.
        ``on_complete`` (e.g. storing in the cache) runs once after the source ends
        normally; until it returns, newcomers still join and replay the finished
        items instead of starting again. Leaving the block unsubscribes; the last
        one out cancels an unfinished source (which closes its iterator).
        """
        flight: _Broadcast[T] | None = self._streams.get(key)
        shared = flight is not None
        if flight is None:
            flight = _Broadcast()
            self._streams[key] = flight
            flight.task = asyncio.create_task(self._pump(key, flight, open_source, on_complete))
        else:
            self.coalesced += 1
        flight.subscribers += 1
        items = flight.follow()
        try:
            yield items, shared
        finally:
            await items.aclose()
            flight.subscribers -= 1
            if flight.subscribers == 0 and not flight.finished and flight.task is not None:
                self._forget_stream(key, flight)
                flight.task.cancel()

    async def _pump(
        self,
        key: str,
        flight: _Broadcast[T],
        open_source: Callable[[], AsyncIterator[T]],
        on_complete: Callable[[Sequence[T]], Awaitable[None]] | None,
    ) -> None:
        try:
            source = open_source()
            try:
                async for item in source:
                    flight.items.append(item)
                    flight.wake()
            finally:
                aclose = getattr(source, "aclose", None)
                if aclose is not None:
                    await aclose()
        except asyncio.CancelledError:
            flight.error = asyncio.CancelledError()
            flight.wake()
            self._forget_stream(key, flight)
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every subscriber, who re-raises it
            flight.error = exc
            flight.wake()
            self._forget_stream(key, flight)
            return
        flight.finished = True
        flight.wake()
        try:
            if on_complete is not None:
                await on_complete(flight.items)
        finally:
            self._forget_stream(key, flight)

    def _call_done(self, key: str, call: _Call[Any], _task: asyncio.Task[Any]) -> None:
        self._forget_call(key, call)

    def _forget_call(self, key: str, call: _Call[Any]) -> None:
        if self._calls.get(key) is call:
            del self._calls[key]

    def _forget_stream(self, key: str, flight: _Broadcast[Any]) -> None:
        if self._streams.get(key) is flight:
            del self._streams[key]


async def _invoke(compute: Callable[[], Awaitable[T]]) -> T:
    return await compute()
