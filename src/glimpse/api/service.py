"""Running a generation for any API surface: guard, cache, single-flight, engine, quota.

Every route that generates calls ``GenerationService.handle`` once, with the engine
request its adapter built, the request's context and a way to see the client leave;
the prompt is screened, the answer comes from the cache, from an identical request
already running or from the engine, and the tokens are charged to the caller's
quota. A cached answer, a coalesced duplicate and a fresh generation look the same
to the routes: a first event (awaited before any response is sent, so errors still
get their status code) and the rest of the stream, or the whole ``Completion``.
Closing the stream early cancels the work it was waiting for, unless other
identical requests still follow it.

A request with several choices (OpenAI's ``n``, ``api.choices``) is screened once and
charged once, for its prompt and every choice's tokens; each choice is answered as
above, on its own. An answer with log-probabilities is never cached: the cache keeps
text, and a replay without them would answer another question.

Nothing here waits for ever (issue 12, F1): every wait for the next event ends at
the request's deadline (``DeadlineExceeded``, 504), and a client that goes away
while its answer is being prepared cancels that work at once, which frees its
place in the engine's queue; each such disconnect is counted in
``glimpse_client_disconnects_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncGenerator, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal, TypeVar, overload

from glimpse.api.choices import together
from glimpse.api.context import AuditDetails, RequestContext
from glimpse.api.streams import DisconnectWatcher, StreamTail, TokenStream, replay, within_deadline
from glimpse.cache import CachedResult, ResultCache, cache_key, is_cacheable
from glimpse.config import AnswerDefaults, CacheSettings
from glimpse.engine.protocol import (
    AdapterServing,
    Engine,
    FinishReason,
    GenerationRequest,
    ImagePart,
    SamplingResolver,
    TokenEvent,
    TokenLogprob,
    ToolCall,
)
from glimpse.engine.tool_calls import collect_tool_calls
from glimpse.errors import ClientDisconnected, EngineRequestError
from glimpse.guard import PromptGuard, QuotaTracker
from glimpse.obs import Metrics

__all__ = [
    "CACHE_HEADER",
    "CacheStatus",
    "Completion",
    "GenerationService",
    "OpenStream",
]

_ANSWERS = (FinishReason.STOP, FinishReason.LENGTH)
_T = TypeVar("_T")

#: Response header telling whether the answer came from the result cache.
CACHE_HEADER = "X-Glimpse-Cache"


class CacheStatus(StrEnum):
    HIT = "hit"
    MISS = "miss"
    SHARED = "shared"  # joined an identical request already running
    BYPASS = "bypass"  # not cacheable, or the client said no-cache


@dataclass(slots=True, frozen=True)
class Completion:
    """A whole answer, and where it came from."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    cache: CacheStatus
    reasoning: str = ""
    #: The answer tokens' log-probabilities, when the request asked for them.
    logprobs: tuple[TokenLogprob, ...] = ()
    tool_calls: tuple[ToolCall, ...] = ()


@dataclass(slots=True)
class OpenStream:
    """A streamed answer: its first event is in, the rest follows; ``close`` cancels what is left."""

    first: TokenEvent
    rest: TokenStream
    cache: CacheStatus

    async def close(self) -> None:
        await self.rest.aclose()


def _message_shape(gen: GenerationRequest) -> list[dict[str, object]]:
    shape: list[dict[str, object]] = []
    for m in gen.messages:
        message: dict[str, object] = {
            "role": m.role,
            "content": [
                {"type": "image", "sha256": p.sha256}
                if isinstance(p, ImagePart)
                else {"type": "text", "text": p.text}
                for p in m.content
            ],
        }
        if m.tool_calls:
            message["tool_calls"] = [dataclasses.asdict(call) for call in m.tool_calls]
        if m.tool_call_id is not None:
            message["tool_call_id"] = m.tool_call_id
        shape.append(message)
    return shape


def _number(value: float | None) -> float | None:
    """A sampling value as the key holds it: ``1`` and ``1.0`` are one setting; unset stays ``None``."""
    return None if value is None else float(value)


def _to_result(events: Sequence[TokenEvent]) -> CachedResult | None:
    if not events or events[-1].finish_reason not in _ANSWERS:
        return None
    last = events[-1]
    chunks = tuple(e.text for e in events if e.text)
    reasoning = "".join(e.reasoning for e in events)
    calls = collect_tool_calls(delta for e in events for delta in e.tool_calls)
    return CachedResult(
        "".join(chunks),
        chunks,
        str(last.finish_reason),
        last.prompt_tokens,
        last.completion_tokens,
        reasoning,
        tuple((c.id, c.name, c.arguments) for c in calls),
    )


def _overall(statuses: Iterable[CacheStatus]) -> CacheStatus:
    """One status for a request's choices: theirs if they agree, else a miss (something was generated)."""
    found = set(statuses)
    return found.pop() if len(found) == 1 else CacheStatus.MISS


class GenerationService:
    """The one way a route turns an engine request into an answer (see the module's docstring)."""

    def __init__(
        self,
        engine: Engine,
        cache: ResultCache | None,
        settings: CacheSettings,
        metrics: Metrics,
        *,
        guard: PromptGuard,
        guard_mode: Literal["off", "flag", "block"],
        quota: QuotaTracker,
        answer_settings: AnswerDefaults | None = None,
    ) -> None:
        self.engine = engine
        self.cache = cache
        self.settings = settings
        self.metrics = metrics
        self.guard = guard
        self.guard_mode = guard_mode
        self.quota = quota
        #: Server settings that shape answers (template defaults, reasoning split): part of every
        #: cache key, so replicas configured differently never share entries in one Redis.
        self.answer_settings = answer_settings if answer_settings is not None else AnswerDefaults()

    @overload
    async def handle(
        self,
        gen: GenerationRequest,
        context: RequestContext,
        watcher: DisconnectWatcher,
        *,
        stream: Literal[False],
        on_first_event: Callable[[], None] | None = None,
    ) -> Completion: ...

    @overload
    async def handle(
        self,
        gen: GenerationRequest,
        context: RequestContext,
        watcher: DisconnectWatcher,
        *,
        stream: Literal[True],
        on_first_event: Callable[[], None] | None = None,
    ) -> OpenStream: ...

    async def handle(
        self,
        gen: GenerationRequest,
        context: RequestContext,
        watcher: DisconnectWatcher,
        *,
        stream: bool,
        on_first_event: Callable[[], None] | None = None,
    ) -> Completion | OpenStream:
        """Screen, answer (cache, single-flight or engine) and charge the caller's quota.

        A client that leaves before the answer (or its first event, for a ``stream``) is
        ready cancels the work at once (``ClientDisconnected``); one that leaves during
        a stream is counted. ``on_first_event`` runs once the first event is in (the
        engine has taken the request's images by then), e.g. to free the decoded images
        before the answer ends. The context gets the audit details, the cache status and
        the tokens; a stream's tokens are charged when its final event passes.
        """
        if stream:
            (opened,) = await self.handle_choices(
                [gen], context, watcher, stream=True, on_first_event=on_first_event
            )
            return opened
        (completion,) = await self.handle_choices(
            [gen], context, watcher, stream=False, on_first_event=on_first_event
        )
        return completion

    @overload
    async def handle_choices(
        self,
        gens: Sequence[GenerationRequest],
        context: RequestContext,
        watcher: DisconnectWatcher,
        *,
        stream: Literal[False],
        on_first_event: Callable[[], None] | None = None,
    ) -> list[Completion]: ...

    @overload
    async def handle_choices(
        self,
        gens: Sequence[GenerationRequest],
        context: RequestContext,
        watcher: DisconnectWatcher,
        *,
        stream: Literal[True],
        on_first_event: Callable[[], None] | None = None,
    ) -> list[OpenStream]: ...

    async def handle_choices(
        self,
        gens: Sequence[GenerationRequest],
        context: RequestContext,
        watcher: DisconnectWatcher,
        *,
        stream: bool,
        on_first_event: Callable[[], None] | None = None,
    ) -> list[Completion] | list[OpenStream]:
        """``handle`` for the choices of one request (``api.choices.choice_requests``), in their order.

        The prompt is screened once; every choice opens before ``on_first_event`` runs
        (they all read the images); the caller is charged once, for the prompt and the
        tokens of every choice, when the last one ends.
        """
        gens = [self.resolve_sampling(gen) for gen in gens]

        def first_event_in() -> None:
            context.first_event_at = time.monotonic()
            if on_first_event is not None:
                on_first_event()

        if gens[0].adapter is not None:
            self.metrics.lora_requests.labels(adapter=gens[0].adapter).inc()
        await self._screen(gens[0], context)
        partition = self._partition(context)
        # Unseeded sampled choices share one key: each must draw its own answer, not the cached one.
        first = gens[0].sampling
        no_cache = context.no_cache or (len(gens) > 1 and not first.greedy and first.seed is None)
        if not stream:
            completions = await self._unless_disconnected(
                self._answers(gens, no_cache, partition, first_event_in), watcher
            )
            context.cache = _overall(c.cache for c in completions)
            await self._charge(
                context, completions[0].prompt_tokens, sum(c.completion_tokens for c in completions)
            )
            return completions
        opened = await self._unless_disconnected(self._open_all(gens, no_cache, partition), watcher)
        first_event_in()
        context.cache = _overall(o.cache for o in opened)
        finals: list[TokenEvent] = []

        async def charge(final: TokenEvent) -> None:
            finals.append(final)
            if len(finals) == len(opened):
                prompt = max(f.prompt_tokens for f in finals)
                await self._charge(context, prompt, sum(f.completion_tokens for f in finals))

        for index, choice in enumerate(opened):
            done = choice.first.finish_reason is not None
            if done:
                await charge(choice.first)
            # One request counts one disconnect: the first choice's stream counts it.
            choice.rest = StreamTail(choice.rest, self.metrics, done or index > 0, charge)
        return opened

    async def _screen(self, gen: GenerationRequest, context: RequestContext) -> None:
        """Run the prompt-injection guard on the conversation; refuse in ``block`` mode.

        The texts are the engine request's, already sanitised by the adapter, so the
        guard screens exactly what the model will read; the guard screens each
        message and the user's messages joined (an injection split over two messages
        is one injection to the model). Assistant turns too: the client sends the whole
        history, so an "earlier answer" is client text like any other.
        """
        texts = [m.text for m in gen.messages if m.text]
        verdict = await self.guard.acheck(texts, [m.role for m in gen.messages if m.text])
        context.audit = AuditDetails(
            prompt_texts=tuple(texts),
            image_sha256=tuple(image.sha256 for image in gen.images),
            image_dims=tuple(image.image.size for image in gen.images),
            guard=verdict,
            adapter=gen.adapter,
        )
        if self.guard_mode != "off":
            self.metrics.observe_guard("flagged" if verdict.flagged else "clean")
        self.guard.decide(verdict)

    def _partition(self, context: RequestContext) -> str:
        """Whose cached answers this request may see: its own client's, unless the operator shares them.

        A hit (``X-Glimpse-Cache: hit``) tells the caller that someone asked exactly
        this before; per-client partitions keep that from crossing API keys.
        """
        if self.settings.shared_across_clients:
            return ""
        principal = context.principal
        return "anonymous" if principal is None else str(principal.client_id)

    async def _charge(self, context: RequestContext, prompt_tokens: int, completion_tokens: int) -> None:
        """Count a finished request's tokens against its client's daily quota, and for the audit record."""
        context.tokens_in, context.tokens_out = prompt_tokens, completion_tokens
        if context.principal is not None:
            await self.quota.consume(context.principal, prompt_tokens + completion_tokens)

    def resolve_sampling(self, gen: GenerationRequest) -> GenerationRequest:
        """``gen`` with its unset sampling fields filled in by the engine, when the engine can.

        Done before the cache is consulted, so the key and the "greedy?" rule see the
        settings the model runs with (a checkpoint may recommend sampling by default).
        An engine that cannot resolve them (an upstream server) keeps them unset.
        """
        if not isinstance(self.engine, SamplingResolver):
            return gen
        sampling = self.engine.resolve_sampling(gen.sampling)
        return gen if sampling == gen.sampling else dataclasses.replace(gen, sampling=sampling)

    def cache_key(self, gen: GenerationRequest, partition: str = "") -> str:
        """``partition``: who may share the entry (a client id), ``""`` for everyone."""
        s = gen.sampling
        return cache_key(
            self.engine.model_name,
            [image.sha256 for image in gen.images],
            _message_shape(gen),
            {
                "max_new_tokens": s.max_new_tokens,
                "temperature": _number(s.temperature),
                "top_p": _number(s.top_p),
                "top_k": s.top_k,
                "min_p": _number(s.min_p),
                "repetition_penalty": _number(s.repetition_penalty),
                "presence_penalty": _number(s.presence_penalty),
                "frequency_penalty": _number(s.frequency_penalty),
                "seed": s.seed,
                "logit_bias": [[token, _number(bias)] for token, bias in s.logit_bias],
                "stop": list(s.stop),
                "ignore_eos": s.ignore_eos,
                "response_format": None
                if s.response_format is None
                else dataclasses.asdict(s.response_format),
                "template": dict(gen.template_kwargs),
                "tools": None if gen.tools is None else dataclasses.asdict(gen.tools),
                "server": self.answer_settings.model_dump(mode="json"),
                "adapter": self._adapter_identity(gen.adapter),
            },
            partition,
        )

    def _adapter_identity(self, name: str | None) -> str | None:
        """An adapter as the cache key holds it: its name and its weights' digest, so an adapter loaded
        again under the same name with other weights never gets the old one's answers."""
        if name is None:
            return None
        info = self.engine.adapter(name) if isinstance(self.engine, AdapterServing) else None
        return f"{name}@{info.digest}" if info is not None else name

    def _cacheable(self, gen: GenerationRequest, no_cache: bool) -> bool:
        return (
            not no_cache
            and gen.sampling.logprobs is None
            and is_cacheable(gen.sampling.greedy, gen.sampling.seed, self.settings.allow_sampled)
        )

    async def _open(self, gen: GenerationRequest, *, no_cache: bool, partition: str) -> OpenStream:
        started = time.perf_counter()
        if self.cache is not None and self._cacheable(gen, no_cache):
            key = self.cache_key(gen, partition)
            cached = await self.cache.lookup(key)
            if cached is not None:
                return await self._first(replay(cached), CacheStatus.HIT, gen.deadline)
            holder: list[CacheStatus] = []
            stream = await self._first(
                self._shared(key, gen, holder, started), CacheStatus.MISS, gen.deadline
            )
            stream.cache = holder[0] if holder else CacheStatus.MISS
            return stream
        events = self.engine.submit(gen)
        return await self._first(self._observed(events, started), CacheStatus.BYPASS, gen.deadline)

    async def _shared(
        self, key: str, gen: GenerationRequest, holder: list[CacheStatus], started: float
    ) -> AsyncGenerator[TokenEvent, None]:
        assert self.cache is not None
        # Observed where it is generated: requests that join a running generation share its
        # tokens, and counting them per joiner would count one generation several times.
        source = lambda: self._observed(self.engine.submit(gen), started)  # noqa: E731
        async with self.cache.stream(key, source, _to_result) as (items, shared):
            holder.append(CacheStatus.SHARED if shared else CacheStatus.MISS)
            async for event in items:
                yield event

    async def _observed(
        self, events: AsyncGenerator[TokenEvent, None], started: float
    ) -> AsyncGenerator[TokenEvent, None]:
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
            await events.aclose()

    @staticmethod
    async def _first(
        source: AsyncGenerator[TokenEvent, None], status: CacheStatus, deadline: float | None
    ) -> OpenStream:
        events = within_deadline(source, deadline)
        try:
            first = await events.__anext__()
        except StopAsyncIteration:  # every stream must end with a finish event
            raise EngineRequestError("The engine produced no output.") from None
        except BaseException:
            await events.aclose()
            raise
        return OpenStream(first, events, status)

    async def _open_all(
        self, gens: Sequence[GenerationRequest], no_cache: bool, partition: str
    ) -> list[OpenStream]:
        """Every choice's stream, opened side by side; on a failure, those already open are closed."""
        return await together(
            [self._open(gen, no_cache=no_cache, partition=partition) for gen in gens], OpenStream.close
        )

    async def _answers(
        self,
        gens: Sequence[GenerationRequest],
        no_cache: bool,
        partition: str,
        on_first_event: Callable[[], None] | None,
    ) -> list[Completion]:
        opened = await self._open_all(gens, no_cache, partition)
        try:
            if on_first_event is not None:
                on_first_event()
            return await together([self._collect(stream) for stream in opened])
        finally:  # also the streams whose collecting never started (cancelled first)
            for stream in opened:
                await stream.close()

    @staticmethod
    async def _collect(stream: OpenStream) -> Completion:
        events = [stream.first]
        while (reason := events[-1].finish_reason) is None:
            events.append(await stream.rest.__anext__())
        last = events[-1]
        return Completion(
            "".join(e.text for e in events),
            reason,
            last.prompt_tokens,
            last.completion_tokens,
            stream.cache,
            "".join(e.reasoning for e in events),
            tuple(entry for e in events for entry in e.logprobs),
            collect_tool_calls([call for e in events for call in e.tool_calls]),
        )

    async def _unless_disconnected(self, work: Coroutine[Any, Any, _T], watcher: DisconnectWatcher) -> _T:
        """``work``'s result; ``ClientDisconnected`` (``work`` cancelled) if the client leaves first."""
        task = asyncio.create_task(work)
        gone = asyncio.create_task(watcher.disconnected())
        try:
            done, _ = await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
            if task in done:
                return task.result()
            self.metrics.observe_disconnect("waiting")
            raise ClientDisconnected("The client closed the connection before the answer was ready.")
        finally:
            gone.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
