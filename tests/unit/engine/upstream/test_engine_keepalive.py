"""The upstream engine over keep-alive connections (uvicorn, HTTP/1.1): pooled connections come back.

When the engine handed out an answer's last event before it had closed the upstream
response, the consumer (done by then) cancelled the attempt while the response was
closing, and the pooled connection leaked: a pool of 4 was exhausted after 4 answers.
This runs many more answers than the pool holds, the consumer leaving at the finish event.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from glimpse.config import EngineSettings, UpstreamSettings
from glimpse.engine.upstream import UpstreamEngine

from ._fakes import make_request


async def _chat(request: Request) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        for word in ("a", "b", "c"):
            yield f'data: {{"choices": [{{"delta": {{"content": "{word}"}}}}]}}\n\n'
            await asyncio.sleep(0.01)
        yield 'data: {"choices": [{"delta": {}, "finish_reason": "stop"}]}\n\n'
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


async def _health(request: Request) -> JSONResponse:
    return JSONResponse({})


async def _models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [{"id": "m", "object": "model"}]})


@pytest.fixture
def keepalive_server() -> Iterator[str]:
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", _chat, methods=["POST"]),
            Route("/health", _health),
            Route("/v1/models", _models),
        ]
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the keep-alive stand-in did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


async def test_leaving_at_the_finish_event_returns_every_pooled_connection(keepalive_server):
    settings = EngineSettings(kind="upstream", model="m")
    upstream = UpstreamSettings(
        urls=(keepalive_server,), health_interval_s=3600, max_connections=4, pool_timeout_s=2
    )
    engine = UpstreamEngine(settings, upstream)
    await engine.start()
    try:
        for i in range(20):  # five times the pool
            stream = engine.submit(make_request(f"r{i}"))
            try:
                async for event in stream:
                    if event.finish_reason is not None:
                        break  # the consumer leaves here, as the HTTP layer does
            finally:
                await stream.aclose()
    finally:
        await engine.stop()
