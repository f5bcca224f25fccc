"""Admission from the headers (issue 12, F7/F8): what will be refused is refused before its body is read."""

from __future__ import annotations

import asyncio
import json

import pytest
from asgi_lifespan import LifespanManager
from fastapi import Depends
from pydantic import SecretStr
from tests.fakes import FakeEngine
from tests.images import data_url, png_b64, png_bytes

from glimpse.api.admission import Admission
from glimpse.api.app import create_app
from glimpse.api.context import RequestContext
from glimpse.api.middleware import AdmissionMiddleware
from glimpse.api.security import authorize
from glimpse.api.shedding import SMALL_BODY_BYTES
from glimpse.config import EngineSettings, GuardSettings, MediaSettings, Settings

KEY = "glk-test-0123456789abcdef0123456789abcdef"
BIG = 29 * 1024 * 1024


class LazyBody:
    """A request body that counts how much of it the server pulled."""

    def __init__(self, size: int, chunk: int = 1024 * 1024) -> None:
        self.size, self.chunk, self.pulled = size, chunk, 0

    async def __aiter__(self):
        sent = 0
        while sent < self.size:
            piece = min(self.chunk, self.size - sent)
            self.pulled += piece
            sent += piece
            yield b" " * piece


def _chat(text: str = "q") -> dict:
    content = [{"type": "image_url", "image_url": {"url": data_url()}}, {"type": "text", "text": text}]
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 4}


def _json_headers(size: int | None = None, **extra: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", **extra}
    if size is not None:
        headers["Content-Length"] = str(size)
    return headers


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_unauthenticated_big_body_is_refused_before_it_is_read(make_client, declared):
    """F8: a 29 MiB body without a credential used to be parsed in full before the 401."""
    settings = Settings(guard=GuardSettings(api_keys=(SecretStr(KEY),)))
    body = LazyBody(BIG)
    async with make_client(FakeEngine(), settings) as client:
        response = await client.post(
            "/v1/chat/completions", content=body, headers=_json_headers(BIG if declared else None)
        )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert body.pulled == 0


async def test_overloaded_engine_refuses_from_the_headers(make_client):
    """F7: at capacity, 503 + Retry-After before the body is read (no JSON parsed, no image decoded)."""
    engine = FakeEngine(words=("a",) * 50, delay_s=0.02)
    settings = Settings(engine=EngineSettings(max_queue=0, max_batch_size=1))
    async with make_client(engine, settings) as client:
        running = asyncio.create_task(client.post("/v1/chat/completions", json=_chat()))
        async with asyncio.timeout(5):
            while engine.in_flight == 0:  # noqa: ASYNC110 - the fake engine has no event to wait on
                await asyncio.sleep(0.005)
        body = LazyBody(SMALL_BODY_BYTES + 1)  # a small body that has arrived is consumed (keep-alive)
        refused = await client.post(
            "/v1/chat/completions", content=body, headers=_json_headers(SMALL_BODY_BYTES + 1)
        )
        infer = await client.post("/infer", json={"image": png_b64(), "text": "q"})
        models = await client.get("/v1/models")  # not a generation: never refused for capacity
        assert (await running).status_code == 200
        after = await client.post("/v1/chat/completions", json=_chat("another question"))
        metrics = (await client.get("/metrics")).text
        admitted = client.app.state.glimpse.admission.in_flight
    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "overloaded"
    assert body.pulled == 0
    assert infer.status_code == 503
    assert models.status_code == 200
    assert after.status_code == 200  # the slot was given back when the first answer was sent
    assert len(engine.requests) == 2
    assert 'glimpse_rejected_requests_total{reason="overloaded"} 2.0' in metrics
    # Shed in front of the app (api.shedding), yet counted under the route it asked for.
    assert 'glimpse_http_requests_total{route="/v1/chat/completions",status="503"} 1.0' in metrics
    assert 'glimpse_http_requests_total{route="/infer",status="503"} 1.0' in metrics
    assert admitted == 0


async def test_engine_not_ready_is_refused_from_the_headers(make_client):
    engine = FakeEngine(ready=False)
    body = LazyBody(1024)
    async with make_client(engine) as client:
        response = await client.post("/v1/chat/completions", content=body, headers=_json_headers(1024))
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert body.pulled == 0


async def test_a_request_arriving_during_the_drain_is_refused_unread(make_client):
    async with make_client(FakeEngine()) as client:
        client.app.state.glimpse.start_draining()
        body = LazyBody(1024)
        response = await client.post("/infer", content=body, headers=_json_headers(1024))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "not_ready"
    assert body.pulled == 0


async def test_rate_limited_request_is_refused_unread(make_client):
    settings = Settings(guard=GuardSettings(rate_limit_per_minute=1))
    async with make_client(FakeEngine(), settings) as client:
        first = await client.post("/infer", json={"image": png_b64(), "text": "q"})
        body = LazyBody(1024)
        second = await client.post("/infer", content=body, headers=_json_headers(1024))
        admitted = client.app.state.glimpse.admission.in_flight
    assert admitted == 0  # the capacity taken before the rate-limit check was given back
    assert first.status_code == 200
    assert second.status_code == 429
    assert int(second.headers["retry-after"]) >= 1
    assert body.pulled == 0


async def test_each_route_has_its_own_body_limit(make_client):
    """An upload of one image is refused above one image's worth; chat may carry several images."""
    settings = Settings(media=MediaSettings(max_image_bytes=64 * 1024, max_images_per_request=4))
    limits = Admission(settings).body_limits()
    analyze_limit = limits["/v1/analyze"]
    assert analyze_limit < limits["/infer"] < limits["/v1/chat/completions"] <= settings.server.max_body_bytes
    async with make_client(FakeEngine(), settings) as client:
        declared = LazyBody(analyze_limit + 1)
        too_big = await client.post(
            "/v1/analyze",
            content=declared,
            headers={
                "Content-Type": "multipart/form-data; boundary=x",
                "Content-Length": str(analyze_limit + 1),
            },
        )
        streamed = LazyBody(limits["/infer"] + 1, chunk=64 * 1024)
        too_big_chunked = await client.post("/infer", content=streamed, headers=_json_headers())
        chat_size = await client.post(
            "/v1/chat/completions",
            content=json.dumps(_chat()).encode() + b" " * (analyze_limit + 1),
            headers=_json_headers(),
        )
        upload = await client.post(
            "/v1/analyze", files={"image": ("a.png", png_bytes(), "image/png")}, data={"question": "q"}
        )
    assert too_big.status_code == 413
    assert f"larger than {analyze_limit} bytes" in too_big.json()["error"]["message"]
    assert declared.pulled == 0
    assert too_big_chunked.status_code == 413
    assert streamed.pulled <= limits["/infer"] + 64 * 1024  # stopped as soon as it passed the limit
    assert chat_size.status_code == 200  # the same size is fine where four images may come
    assert upload.status_code == 200


async def test_every_api_route_refuses_a_missing_credential_from_the_headers(make_client):
    """The admission table covers every route that needs a caller: none is authenticated late."""
    settings = Settings(guard=GuardSettings(api_keys=(SecretStr(KEY),)))
    public = {"/healthz", "/readyz", "/health", "/metrics", "/"}
    async with make_client(FakeEngine(), settings) as client:
        schema = (await client.get("/openapi.json")).json()
        routes = [
            (method.upper(), path)
            for path, methods in schema["paths"].items()
            for method in methods
            if path not in public
        ]
        assert ("POST", "/v1/chat/completions") in routes
        for method, path in routes:
            body = LazyBody(1024)
            response = await client.request(method, path, content=body, headers=_json_headers(1024))
            assert (response.status_code, body.pulled) == (401, 0), (method, path)
    admission = Admission(settings)
    assert all(admission.policy(method, path) is not None for method, path in routes)
    assert {path for _, path in admission.policies} <= {path for _, path in routes}


async def test_a_route_missing_from_the_table_is_still_authorized_late(make_client):
    settings = Settings(guard=GuardSettings(api_keys=(SecretStr(KEY),)))
    async with make_client(FakeEngine(), settings) as client:

        @client.app.get("/v1/extra", dependencies=[Depends(authorize)])
        async def extra() -> dict[str, bool]:
            return {"ok": True}

        anonymous = await client.get("/v1/extra")
        known = await client.get("/v1/extra", headers={"X-API-Key": KEY})
    assert anonymous.status_code == 401
    assert known.json() == {"ok": True}


async def test_the_server_process_is_told_when_the_engine_is_ready():
    """``cli`` freezes the heap then (long GC walks stalled refusals for 0.3 s); tests are not."""
    calls: list[str] = []
    app = create_app(Settings(), engine=FakeEngine(), on_ready=lambda: calls.append("ready"))
    async with LifespanManager(app):
        async with asyncio.timeout(5):
            while not calls:  # noqa: ASYNC110 - the engine starts in a background task
                await asyncio.sleep(0.01)
    assert calls == ["ready"]


@pytest.mark.parametrize("trailing_awaits", [0, 3])
async def test_capacity_is_given_back_before_the_last_byte_is_sent(make_client, trailing_awaits):
    """A client that sends its next request as soon as it has an answer must find the place free.

    The capacity used to go back when the app returned. Anything the app awaits after its last
    send (Starlette's streaming response waits for its disconnect listener to end) let a fast
    client's next request in first, and it was refused by a server with nothing to do.
    """
    async with make_client(FakeEngine()) as client:
        state = client.app.state.glimpse
        admission = state.admission

        async def app(scope, receive, send):  # answers, then lingers as Starlette may
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"{}", "more_body": False})
            for _ in range(trailing_awaits):
                await asyncio.sleep(0)

        held_at_last_byte: list[int] = []

        async def send(message):
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                held_at_last_byte.append(admission.in_flight)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        middleware = AdmissionMiddleware(app, admission, lambda: state)
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "headers": [(b"host", b"127.0.0.1")],
            "client": ("127.0.0.1", 1),
        }
        RequestContext.from_scope(scope).attach(scope)
        await middleware(scope, receive, send)
        assert held_at_last_byte == [0]
        assert admission.in_flight == 0  # and given back once only
