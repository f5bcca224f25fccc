"""Running a generation for any API surface: cache, single-flight, metrics, disconnects.

Both ``/v1/chat/completions`` and ``/infer`` come through here, so a cached
answer, a coalesced duplicate and a fresh generation look the same to them: a
first event (awaited before any response is sent, so errors still get their
status code) and the rest of the stream. Closing the stream early cancels the
work it was waiting for, unless other identical requests still follow it.

Nothing here waits for ever (issue 12, F1): every wait for the next event ends at
the request's deadline (``DeadlineExceeded``, 504), and a client that goes away
while its answer is being prepared cancels that work at once, which frees its
place in the engine's queue; each such disconnect is counted in
``glimpse_client_disconnects_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

from starlette.requests import Request

from glimpse.cache import CachedResult, ResultCache, cache_key, is_cacheable
from glimpse.config import AnswerDefaults, CacheSettings
from glimpse.engine.protocol import Engine, FinishReason, GenerationRequest, ImagePart, TokenEvent
from glimpse.errors import ClientDisconnected, DeadlineExceeded, EngineRequestError
from glimpse.obs import Metrics

__all__ = ["CACHE_HEADER", "CacheStatus", "Completion", "GenerationService", "OpenStream"]

_ANSWERS = (FinishReason.STOP, FinishReason.LENGTH)
_T = TypeVar("_T")

#: Response header telling whether the answer came from the result cache.
CACHE_HEADER = "X-Glimpse-Cache"


class CacheStatus(StrEnum):
    HIT = "hit"
    MISS = "miss"
    SHARED = "shared"  # joined an identical request already running
    BYPASS = "bypass"  # not cacheable, or the client said no-cache


@dataclass(slots=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    reasoning: str = ""


@dataclass(slots=True)
class OpenStream:
    first: TokenEvent
    rest: AsyncIterator[TokenEvent]
    cache: CacheStatus

    async def close(self) -> None:
        await self.rest.aclose()  # type: ignore[attr-defined]


def _message_shape(gen: GenerationRequest) -> list[dict[str, object]]:
    return [
        {
            "role": m.role,
            "content": [
                {"type": "image", "sha256": p.sha256}
                if isinstance(p, ImagePart)
                else {"type": "text", "text": p.text}
                for p in m.content
            ],
        }
        for m in gen.messages
    ]


def _to_result(events: Sequence[TokenEvent]) -> CachedResult | None:
    if not events or events[-1].finish_reason not in _ANSWERS:
        return None
    last = events[-1]
    chunks = tuple(e.text for e in events if e.text)
    reasoning = "".join(e.reasoning for e in events)
    return CachedResult(
        "".join(chunks),
        chunks,
        str(last.finish_reason),
        last.prompt_tokens,
        last.completion_tokens,
        reasoning,
    )


async def _replay(cached: CachedResult) -> AsyncIterator[TokenEvent]:
    if cached.reasoning:
        yield TokenEvent("", (), None, cached.prompt_tokens, 0, cached.reasoning)
    for index, chunk in enumerate(cached.chunks, start=1):
        yield TokenEvent(chunk, (), None, cached.prompt_tokens, index)
    reason = FinishReason(cached.finish_reason)
    yield TokenEvent("", (), reason, cached.prompt_tokens, cached.completion_tokens)


async def _watch_disconnect(request: Request) -> None:
    """Return once the client has gone away (the body has been read by then)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _within(events: AsyncIterator[TokenEvent], deadline: float | None) -> AsyncIterator[TokenEvent]:
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
        await events.aclose()  # type: ignore[attr-defined]


class _DisconnectCounter:
    """The rest of a streamed answer: counts a consumer that stops before the final event.

    After the 200 only a client that went away (Starlette then cancels the
    response) or a shutdown ends a stream early; an error is not counted, it ends
    the stream. A class, not a generator, so ``aclose`` reaches the source even
    when the consumer never asked for a second event.
    """

    def __init__(self, source: AsyncIterator[TokenEvent], metrics: Metrics, done: bool) -> None:
        self._source = source
        self._metrics = metrics
        self._done = done

    def __aiter__(self) -> _DisconnectCounter:
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
        return event

    def _left(self) -> None:
        if not self._done:
            self._done = True
            self._metrics.observe_disconnect("streaming")

    async def aclose(self) -> None:
        self._left()
        await self._source.aclose()  # type: ignore[attr-defined]


class GenerationService:
    def __init__(
        self,
        engine: Engine,
        cache: ResultCache | None,
        settings: CacheSettings,
        metrics: Metrics,
        answer_settings: AnswerDefaults | None = None,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.settings = settings
        self.metrics = metrics
        #: Server settings that shape answers (template defaults, reasoning split): part of every
        #: cache key, so replicas configured differently never share entries in one Redis.
        self.answer_settings = answer_settings if answer_settings is not None else AnswerDefaults()

    def cache_key(self, gen: GenerationRequest, partition: str = "") -> str:
        """``partition``: who may share the entry (a client id), ``""`` for everyone."""
        s = gen.sampling
        return cache_key(
            self.engine.model_name,
            [image.sha256 for image in gen.images],
            _message_shape(gen),
            {
                "max_new_tokens": s.max_new_tokens,
                "temperature": float(s.temperature),
                "top_p": float(s.top_p),
                "seed": s.seed,
                "stop": list(s.stop),
                "ignore_eos": s.ignore_eos,
                "template": dict(gen.template_kwargs),
                "server": self.answer_settings.model_dump(mode="json"),
            },
            partition,
        )

    def _cacheable(self, gen: GenerationRequest, no_cache: bool) -> bool:
        return not no_cache and is_cacheable(
            gen.sampling.temperature, gen.sampling.seed, self.settings.allow_sampled
        )

    async def open(
        self,
        gen: GenerationRequest,
        *,
        no_cache: bool = False,
        partition: str = "",
        http_request: Request | None = None,
    ) -> OpenStream:
        """The first event and the rest of the stream, for a streamed answer.

        With ``http_request``, a client that disconnects before the first event
        cancels the work at once (``ClientDisconnected``), and one that leaves
        during the stream is counted.
        """
        if http_request is None:
            return await self._open(gen, no_cache=no_cache, partition=partition)
        opening = self._open(gen, no_cache=no_cache, partition=partition)
        stream = await self._unless_disconnected(opening, http_request)
        done = stream.first.finish_reason is not None
        stream.rest = _DisconnectCounter(stream.rest, self.metrics, done)
        return stream

    async def _open(self, gen: GenerationRequest, *, no_cache: bool, partition: str) -> OpenStream:
        started = time.perf_counter()
        events: AsyncIterator[TokenEvent]
        if self.cache is not None and self._cacheable(gen, no_cache):
            key = self.cache_key(gen, partition)
            cached = await self.cache.lookup(key)
            if cached is not None:
                return await self._first(_replay(cached), CacheStatus.HIT, gen.deadline)
            holder: list[CacheStatus] = []
            events = self._shared(key, gen, holder, started)
            stream = await self._first(events, CacheStatus.MISS, gen.deadline)
            stream.cache = holder[0] if holder else CacheStatus.MISS
            return stream
        events = self.engine.submit(gen)
        return await self._first(self._observed(events, started), CacheStatus.BYPASS, gen.deadline)

    async def _shared(
        self, key: str, gen: GenerationRequest, holder: list[CacheStatus], started: float
    ) -> AsyncIterator[TokenEvent]:
        assert self.cache is not None
        # Observed where it is generated: requests that join a running generation share its
        # tokens, and counting them per joiner would count one generation several times.
        source = lambda: self._observed(self.engine.submit(gen), started)  # noqa: E731
        async with self.cache.stream(key, source, _to_result) as (items, shared):
            holder.append(CacheStatus.SHARED if shared else CacheStatus.MISS)
            async for event in items:
                yield event

    async def _observed(self, events: AsyncIterator[TokenEvent], started: float) -> AsyncIterator[TokenEvent]:
        first_at: float | None = None
        try:
            async for event in events:
                if first_at is None and (event.text or event.reasoning or event.finish_reason is not None):
                    first_at = time.perf_counter()
                if event.finish_reason in _ANSWERS:  # recorded before the last yield: callers stop here
                    self.metrics.observe_generation(
                        prompt_tokens=event.prompt_tokens,
                        completion_tokens=event.completion_tokens,
                        ttft_s=None if first_at is None else first_at - started,
                        total_s=time.perf_counter() - started,
                    )
                yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    @staticmethod
    async def _first(
        source: AsyncIterator[TokenEvent], status: CacheStatus, deadline: float | None
    ) -> OpenStream:
        events = _within(source, deadline)
        try:
            first = await events.__anext__()
        except StopAsyncIteration:  # every stream must end with a finish event
            raise EngineRequestError("The engine produced no output.") from None
        except BaseException:
            await events.aclose()  # type: ignore[attr-defined]
            raise
        return OpenStream(first, events, status)

    async def collect(
        self,
        gen: GenerationRequest,
        http_request: Request,
        *,
        no_cache: bool = False,
        partition: str = "",
        on_first_event: Callable[[], None] | None = None,
    ) -> tuple[Completion, CacheStatus]:
        """Run to the end; a client that disconnects first cancels the work.

        ``on_first_event`` runs once the first event is in (the engine has taken the
        request's images by then), e.g. to free the decoded images before the answer ends.
        """

        async def run() -> tuple[Completion, CacheStatus]:
            stream = await self._open(gen, no_cache=no_cache, partition=partition)
            if on_first_event is not None:
                on_first_event()
            parts, thoughts = [stream.first.text], [stream.first.reasoning]
            last = stream.first
            try:
                while last.finish_reason is None:
                    last = await stream.rest.__anext__()
                    parts.append(last.text)
                    thoughts.append(last.reasoning)
            finally:
                await stream.close()
            reason = last.finish_reason
            completion = Completion(
                "".join(parts), reason, last.prompt_tokens, last.completion_tokens, "".join(thoughts)
            )
            return completion, stream.cache

        return await self._unless_disconnected(run(), http_request)

    async def _unless_disconnected(self, work: Coroutine[Any, Any, _T], http_request: Request) -> _T:
        """``work``'s result; ``ClientDisconnected`` (``work`` cancelled) if the client leaves first."""
        task = asyncio.create_task(work)
        watcher = asyncio.create_task(_watch_disconnect(http_request))
        try:
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            self.metrics.observe_disconnect("waiting")
            raise ClientDisconnected("The client closed the connection before the answer was ready.")
        finally:
            watcher.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
