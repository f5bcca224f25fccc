"""A scriptable engine that implements the protocol, for tests that need no model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

from glimpse.engine.protocol import EngineHealth, FinishReason, GenerationRequest, TokenEvent
from glimpse.errors import GlimpseError


@dataclass
class FakeEngine:
    """Answers with ``words`` one per event; records requests; can raise or stall on demand."""

    words: tuple[str, ...] = ("hello", " ", "world")
    name: str = "fake-model"
    ready: bool = True
    raise_on_submit: GlimpseError | None = None
    delay_s: float = 0.0
    requests: list[GenerationRequest] = field(default_factory=list)
    started: bool = False
    stopped: bool = False
    #: Streams opened and not yet closed: the watchdog fixture checks it returns to zero.
    in_flight: int = 0

    @property
    def model_name(self) -> str:
        return self.name

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    def health(self) -> EngineHealth:
        return EngineHealth(self.ready, "ready" if self.ready else "loading", running=self.in_flight)

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        if self.raise_on_submit is not None:
            raise self.raise_on_submit
        self.requests.append(request)
        self.in_flight += 1
        try:
            limit = request.sampling.max_new_tokens
            words = self.words[:limit]
            for i, word in enumerate(words, start=1):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                yield TokenEvent(word, (i,), None, 7, i)
            reason = FinishReason.LENGTH if len(words) == limit else FinishReason.STOP
            yield TokenEvent("", (), reason, 7, len(words))
        finally:
            self.in_flight -= 1


@dataclass
class ThinkingEngine(FakeEngine):
    """Thinks first (``reasoning`` events), then answers, as a reasoning model does."""

    thoughts: tuple[str, ...] = ("let me ", "look")

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        self.requests.append(request)
        count = 0
        for thought in self.thoughts:
            count += 1
            yield TokenEvent("", (count,), None, 7, count, reasoning=thought)
        for word in self.words:
            count += 1
            yield TokenEvent(word, (count,), None, 7, count)
        yield TokenEvent("", (), FinishReason.STOP, 7, count)
