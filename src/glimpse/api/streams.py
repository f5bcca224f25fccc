"""The event streams the service hands the routes, and how it notices that a client has gone.

Split from ``api.service`` so that file holds the pipeline (guard, cache, engine, quota)
and this one the stream plumbing around it: a deadline on every wait (issue 12, F1),
replaying a cached answer as events, the tail of a streamed answer that charges the
quota at its end and counts an early stop, and watching ASGI ``receive`` for a disconnect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from starlette.types import Receive

from glimpse.cache import CachedResult
from glimpse.engine.protocol import FinishReason, TokenEvent, ToolCallDelta
from glimpse.errors import DeadlineExceeded
from glimpse.obs import Metrics

__all__ = ["DisconnectWatcher", "ReceiveWatcher", "StreamTail", "TokenStream", "replay", "within_deadline"]


class TokenStream(Protocol):
    """Events that can be closed before their end (an async generator is one): closing frees the work."""

    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...

    async def __anext__(self) -> TokenEvent: ...

    async def aclose(self) -> None: ...


class DisconnectWatcher(Protocol):
    """Tells the service when the client has gone away, so its work can be cancelled."""

    async def disconnected(self) -> None:
        """Return once the client has gone away (never, while it stays)."""


@dataclass(slots=True, frozen=True)
class ReceiveWatcher:
    """Watches an ASGI ``receive`` for ``http.disconnect`` (the request body has been read by then)."""

    receive: Receive

    async def disconnected(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass


async def replay(cached: CachedResult) -> AsyncGenerator[TokenEvent, None]:
    if cached.reasoning:
        yield TokenEvent("", (), None, cached.prompt_tokens, 0, cached.reasoning)
    for index, chunk in enumerate(cached.chunks, start=1):
        yield TokenEvent(chunk, (), None, cached.prompt_tokens, index)
    if cached.tool_calls:
        calls = tuple(ToolCallDelta(i, *call) for i, call in enumerate(cached.tool_calls))
        yield TokenEvent("", (), None, cached.prompt_tokens, len(cached.chunks), tool_calls=calls)
    reason = FinishReason(cached.finish_reason)
    yield TokenEvent("", (), reason, cached.prompt_tokens, cached.completion_tokens)


async def within_deadline(
    events: AsyncGenerator[TokenEvent, None], deadline: float | None
) -> AsyncGenerator[TokenEvent, None]:
    """``events``, each wait for the next one ending at ``deadline`` (``time.monotonic()``).

    Whatever the source waits on (a queue, a thread, an upstream, a shared
    generation), the request ends at its deadline with ``DeadlineExceeded``, and
    cancelling the wait closes the source, which frees what it held.
    """
    try:
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            scope = asyncio.timeout(remaining)
            try:
                async with scope:
                    event = await events.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                if scope.expired():
                    raise DeadlineExceeded("The request took longer than the server's time limit.") from None
                raise
            yield event
    finally:
        await events.aclose()


class StreamTail:
    """The rest of a streamed answer: runs ``on_final`` with the final event, counts an early stop.

    After the 200 only a client that went away (Starlette then cancels the
    response) or a shutdown ends a stream early; an error is not counted, it ends
    the stream. A class, not a generator function, so ``aclose`` reaches the source
    even when the consumer never asked for a second event.
    """

    def __init__(
        self,
        source: TokenStream,
        metrics: Metrics,
        done: bool,
        on_final: Callable[[TokenEvent], Awaitable[None]],
    ) -> None:
        self._source = source
        self._metrics = metrics
        self._done = done
        self._on_final = on_final

    def __aiter__(self) -> StreamTail:
        return self

    async def __anext__(self) -> TokenEvent:
        try:
            event = await self._source.__anext__()
        except asyncio.CancelledError:
            self._left()
            raise
        except BaseException:
            self._done = True
            raise
        if event.finish_reason is not None:
            self._done = True
            await self._on_final(event)
        return event

    def _left(self) -> None:
        if not self._done:
            self._done = True
            self._metrics.observe_disconnect("streaming")

    async def aclose(self) -> None:
        self._left()
        await self._source.aclose()
