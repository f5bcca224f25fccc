"""Fake OpenAI-compatible upstreams behind one ``httpx.MockTransport``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from glimpse.config import EngineSettings, UpstreamSettings
from glimpse.engine.protocol import ChatMessage, GenerationRequest, SamplingParams, TextPart
from glimpse.engine.upstream import UpstreamEngine


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def chunk(text: str | None = None, finish: str | None = None, usage: tuple[int, int] | None = None) -> bytes:
    payload: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [],
    }
    if text is not None or finish is not None:
        delta = {} if text is None else {"content": text}
        payload["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
    if usage is not None:
        payload["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def answer(*texts: str, finish: str = "stop", usage: tuple[int, int] | None = None) -> list[bytes]:
    """A complete vLLM-style stream: a role chunk, one chunk per text, finish, usage, [DONE]."""
    role = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]}\n\n'
    parts = [role, *(chunk(text) for text in texts), chunk(finish=finish)]
    if usage is not None:
        parts.append(chunk(usage=usage))
    return [*parts, DONE]


class ScriptedStream(httpx.AsyncByteStream):
    """Yields ``before``, then waits for ``hold`` (if any), then ``after``; items may be exceptions."""

    def __init__(
        self,
        before: list[bytes | Exception],
        hold: asyncio.Event | None = None,
        after: list[bytes | Exception] | None = None,
    ) -> None:
        self.before = before
        self.hold = hold
        self.after = after or []
        self.closed = False

    async def __aiter__(self):  # type: ignore[override]
        for item in self.before:
            if isinstance(item, Exception):
                raise item
            yield item
        if self.hold is not None:
            await self.hold.wait()
        for item in self.after:
            if isinstance(item, Exception):
                raise item
            yield item

    async def aclose(self) -> None:
        self.closed = True


ChatHandler = Callable[[httpx.Request, dict[str, Any]], Awaitable[httpx.Response]]


class FakeUpstream:
    def __init__(self, host: str, models: tuple[str, ...] = ("served/GLM-Test",)) -> None:
        self.host = host
        self.models = models
        self.down = False
        self.health_status = 200
        self.chat_bodies: list[dict[str, Any]] = []
        self.chat_headers: list[httpx.Headers] = []
        self.chat_attempts = 0
        self.paths: list[str] = []
        self.streams: list[ScriptedStream] = []
        self.chat: ChatHandler = self.default_chat
        #: When set, ``/v1/models`` answers 200 with this body instead of the model list.
        self.models_stream: httpx.AsyncByteStream | None = None
        #: LoRA adapters listed by ``/v1/models`` as vLLM lists them (name -> root; parent: the first model).
        self.adapters: dict[str, str] = {}
        #: Adapter folders on this upstream's machine (``/v1/load_lora_adapter`` finds only these).
        self.lora_folders: set[str] = set()
        self.lora_bodies: list[dict[str, Any]] = []

    async def default_chat(self, request: httpx.Request, body: dict[str, Any]) -> httpx.Response:
        return self.stream(answer("Hello", " from ", self.host, usage=(11, 3)))

    def stream(
        self,
        before: list[bytes | Exception],
        hold: asyncio.Event | None = None,
        after: list[bytes | Exception] | None = None,
    ) -> httpx.Response:
        stream = ScriptedStream(before, hold, after)
        self.streams.append(stream)
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.paths.append(request.url.path)
        if request.url.path == "/v1/chat/completions":
            self.chat_attempts += 1
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/health":
            return httpx.Response(self.health_status)
        if request.url.path == "/v1/models" and self.models_stream is not None:
            return httpx.Response(200, stream=self.models_stream)
        if request.url.path == "/v1/models":
            data = [{"id": m, "object": "model", "parent": None} for m in self.models]
            data += [
                {"id": n, "object": "model", "root": r, "parent": self.models[0]}
                for n, r in self.adapters.items()
            ]
            return httpx.Response(200, json={"object": "list", "data": data})
        if request.url.path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            return self.lora(request.url.path, json.loads(request.content))
        if request.url.path == "/v1/chat/completions":
            body = json.loads(request.content)
            self.chat_bodies.append(body)
            self.chat_headers.append(request.headers)
            return await self.chat(request, body)
        return httpx.Response(404, json={"detail": "Not Found"})

    def lora(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """vLLM's runtime adapter endpoints: plain-text success, its error objects otherwise."""
        self.lora_bodies.append(body)
        name = body["lora_name"]

        def error(status: int, message: str) -> httpx.Response:
            return httpx.Response(
                status, json={"error": {"message": message, "type": "Error", "code": status}}
            )

        if path == "/v1/unload_lora_adapter":
            if self.adapters.pop(name, None) is None:
                return error(404, f"The lora adapter '{name}' cannot be found.")
            return httpx.Response(200, text=f"Success: LoRA adapter '{name}' removed successfully.")
        if name in self.adapters:
            return error(400, f"The lora adapter '{name}' has already been loaded.")
        if body["lora_path"] not in self.lora_folders:
            return error(400, f"No adapter found for {body['lora_path']}")
        self.adapters[name] = body["lora_path"]
        return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")


class Cluster:
    def __init__(self, *hosts: str) -> None:
        self.upstreams = {host: FakeUpstream(host) for host in hosts}
        self.transport = httpx.MockTransport(self.handle)

    def __getitem__(self, host: str) -> FakeUpstream:
        return self.upstreams[host]

    async def handle(self, request: httpx.Request) -> httpx.Response:
        return await self.upstreams[request.url.host].handle(request)


class RecordingMetrics:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.in_flight: dict[str, int] = {}
        self.healthy: dict[str, bool] = {}
        self.routes: list[str] = []

    def on_request(self, upstream: str, outcome: str, seconds: float) -> None:
        self.requests.append((upstream, outcome))

    def set_in_flight(self, upstream: str, count: int) -> None:
        self.in_flight[upstream] = count

    def set_healthy(self, upstream: str, healthy: bool) -> None:
        self.healthy[upstream] = healthy

    def on_route(self, outcome: str) -> None:
        self.routes.append(outcome)


#: What a request asks for when a test does not say (the API resolves a real one from settings).
MAX_TOKENS = 128


def make_sampling(**sampling: Any) -> SamplingParams:
    return SamplingParams(**{"max_new_tokens": MAX_TOKENS, **sampling})


def make_request(request_id: str = "req-1", text: str = "Describe it.", **sampling: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        messages=(ChatMessage(role="user", content=(TextPart(text),)),),
        sampling=make_sampling(**sampling),
    )


async def wait_until(predicate: Callable[[], bool], within: float = 2.0) -> None:
    """Let other tasks run until ``predicate`` holds (the fakes signal nothing to wait on)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


HOSTS = ("a", "b", "c")


class Harness:
    def __init__(self, hosts=HOSTS, **options) -> None:
        self.cluster = Cluster(*hosts)
        self.clock = FakeClock()
        self.metrics = RecordingMetrics()
        self.client = httpx.AsyncClient(transport=self.cluster.transport)
        settings = EngineSettings(
            kind="upstream",
            model="GLM-Test",
        )
        # Least outstanding unless a test asks: the failover tests rely on which upstream is tried
        # first, which cache-aware routing leaves to a hash (test_engine_routing.py tests that).
        opts = {
            "health_interval_s": 3600,
            "failure_threshold": 2,
            "cooldown_s": 10,
            "routing_policy": "least_outstanding",
        } | options
        upstream = UpstreamSettings(
            urls=tuple(f"http://{h}:8000" for h in hosts), api_key="secret-key", **opts
        )
        self.engine = UpstreamEngine(
            settings, upstream, http_client=self.client, metrics_hook=self.metrics, clock=self.clock
        )

    def __getitem__(self, host):
        return self.cluster[host]

    def upstream(self, host):
        return next(u for u in self.engine.upstreams if u.name == f"http://{host}:8000")

    def chat_attempts(self):
        return {h: u.chat_attempts for h, u in self.cluster.upstreams.items()}


async def collect(engine, request):
    return [event async for event in engine.submit(request)]


def text_of(events):
    return "".join(e.text for e in events)


class Flood(httpx.AsyncByteStream):
    """``head``, then ``count`` copies of ``piece``, made lazily; ``sent`` counts what was taken."""

    def __init__(self, piece: bytes, count: int, head: bytes = b"") -> None:
        self.piece = piece
        self.count = count
        self.head = head
        self.sent = 0
        self.closed = False

    async def __aiter__(self):  # type: ignore[override]
        if self.head:
            self.sent += len(self.head)
            yield self.head
        for _ in range(self.count):
            self.sent += len(self.piece)
            yield self.piece

    async def aclose(self) -> None:
        self.closed = True
