"""Running a generation for any API surface: cache, single-flight, metrics, disconnects.

Both ``/v1/chat/completions`` and ``/infer`` come through here, so a cached
answer, a coalesced duplicate and a fresh generation look the same to them: a
first event (awaited before any response is sent, so errors still get their
status code) and the rest of the stream. Closing the stream early cancels the
work it was waiting for, unless other identical requests still follow it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from starlette.requests import Request

from glimpse.cache import CachedResult, ResultCache, cache_key, is_cacheable
from glimpse.config import CacheSettings
from glimpse.engine.protocol import Engine, FinishReason, GenerationRequest, ImagePart, TokenEvent
from glimpse.errors import ClientDisconnected, EngineRequestError
from glimpse.obs import Metrics

__all__ = ["CACHE_HEADER", "CacheStatus", "Completion", "GenerationService", "OpenStream"]

_ANSWERS = (FinishReason.STOP, FinishReason.LENGTH)

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


class GenerationService:
    def __init__(
        self,
        engine: Engine,
        cache: ResultCache | None,
        settings: CacheSettings,
        metrics: Metrics,
        answer_settings: Mapping[str, object] | None = None,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.settings = settings
        self.metrics = metrics
        #: Server settings that shape answers (template defaults, reasoning split): part of every
        #: cache key, so replicas configured differently never share entries in one Redis.
        self.answer_settings = dict(answer_settings or {})

    def cache_key(self, gen: GenerationRequest) -> str:
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
                "server": self.answer_settings,
            },
        )

    def _cacheable(self, gen: GenerationRequest, no_cache: bool) -> bool:
        return not no_cache and is_cacheable(
            gen.sampling.temperature, gen.sampling.seed, self.settings.allow_sampled
        )

    async def open(self, gen: GenerationRequest, *, no_cache: bool = False) -> OpenStream:
        started = time.perf_counter()
        events: AsyncIterator[TokenEvent]
        if self.cache is not None and self._cacheable(gen, no_cache):
            key = self.cache_key(gen)
            cached = await self.cache.lookup(key)
            if cached is not None:
                return await self._first(_replay(cached), CacheStatus.HIT)
            holder: list[CacheStatus] = []
            events = self._shared(key, gen, holder, started)
            stream = await self._first(events, CacheStatus.MISS)
            stream.cache = holder[0] if holder else CacheStatus.MISS
            return stream
        events = self.engine.submit(gen)
        return await self._first(self._observed(events, started), CacheStatus.BYPASS)

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
    async def _first(events: AsyncIterator[TokenEvent], status: CacheStatus) -> OpenStream:
        try:
            first = await events.__anext__()
        except StopAsyncIteration:  # every stream must end with a finish event
            raise EngineRequestError("The engine produced no output.") from None
        except BaseException:
            await events.aclose()  # type: ignore[attr-defined]
            raise
        return OpenStream(first, events, status)

    async def collect(
        self, gen: GenerationRequest, http_request: Request, *, no_cache: bool = False
    ) -> tuple[Completion, CacheStatus]:
        """Run to the end; a client that disconnects first cancels the work."""

        async def run() -> tuple[Completion, CacheStatus]:
            stream = await self.open(gen, no_cache=no_cache)
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

        work = asyncio.create_task(run())
        watcher = asyncio.create_task(_watch_disconnect(http_request))
        try:
            done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                return work.result()
            raise ClientDisconnected("The client closed the connection before the answer was ready.")
        finally:
            watcher.cancel()
            if not work.done():
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
