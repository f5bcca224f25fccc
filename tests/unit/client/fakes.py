"""Fake servers behind ``httpx.MockTransport``: the real client code runs unchanged."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx


@dataclass
class FakeClock:
    now: float = 0.0

    def __call__(self) -> float:
        return self.now


def sse(obj: object) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


def chunk(content: str | None = None, *, role: str | None = None) -> dict:
    delta: dict = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}


def usage(completion_tokens: int) -> dict:
    return {"id": "x", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": completion_tokens}}


@dataclass
class FakeChat:
    """An OpenAI-compatible chat server: a role chunk, ``tokens`` content chunks, usage, [DONE].

    With a ``clock``, each event moves it forward by ``step`` before it is sent, so
    timings computed by the client are exact.
    """

    tokens: int = 4
    clock: FakeClock | None = None
    role_delay: float = 1.0
    step: float = 0.5
    cache_header: bool = False
    send_usage: bool = True  # vLLM and SGLang send it only when asked; some servers never do
    fail_with: list[int] = field(default_factory=list)  # statuses for the first requests
    bodies: list[dict] = field(default_factory=list)
    cache_control: list[str | None] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def _events(self) -> AsyncIterator[bytes]:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._tick(self.role_delay)
        yield sse(chunk(role="assistant"))
        for i in range(self.tokens):
            await asyncio.sleep(0)  # let other requests interleave, as a real server would
            self._tick(self.step)
            yield sse(chunk(f"t{i} "))
        if self.send_usage:
            yield sse(usage(self.tokens))
        self.in_flight -= 1  # before [DONE]: the client stops reading there
        yield sse("[DONE]")

    def _tick(self, seconds: float) -> None:
        if self.clock is not None:
            self.clock.now += seconds

    async def handler(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "tiny-glm"}]})
        assert request.url.path == "/v1/chat/completions"
        self.bodies.append(json.loads(request.content))
        self.cache_control.append(request.headers.get("cache-control"))
        if self.fail_with:
            status = self.fail_with.pop(0)
            return httpx.Response(status, json={"error": {"message": "busy", "code": "overloaded"}})
        headers = {"content-type": "text/event-stream"}
        if self.cache_header:
            headers["x-glimpse-cache"] = "hit"
        return httpx.Response(200, headers=headers, content=self._events())

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)
