"""No await can hang (issue 12, F1): deadlines, disconnects and the engine watchdog.

Every test here (like every integration test) runs under the watchdog: when the client's block ends, the
engine's queue depth and running count must be back to zero. Disconnects need a
raw ASGI call (httpx's ASGITransport cannot hang up), made on the same app.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import pytest
from tests.fakes import FakeEngine
from tests.images import png_b64
from tests.integration.conftest import ClientFactory, assert_engine_idle

from glimpse.config import ServerSettings, Settings
from glimpse.engine.protocol import GenerationRequest, TokenEvent


@dataclass
class StallingEngine(FakeEngine):
    """Never answers (``first_word``: sends one word first), as a hung preprocessing step did."""

    first_word: bool = False

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        self.requests.append(request)
        self.in_flight += 1
        try:
            if self.first_word:
                yield TokenEvent("hello", (1,), None, 7, 1)
            await asyncio.Event().wait()
            yield TokenEvent("", (), None, 7, 1)  # never reached
        finally:
            self.in_flight -= 1


def _body(stream: bool) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": "hi"}], "stream": stream, "max_tokens": 4}


async def _call_then_hang_up(
    asgi: Any, body: dict[str, Any], *, after_s: float = 0.0, after_start: bool = False
) -> list[dict[str, Any]]:
    """POST ``body`` to the chat route and hang up ``after_s`` seconds later (or once the answer started)."""
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    sent: list[dict[str, Any]] = []
    started = asyncio.Event()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": raw, "more_body": False}
        if after_start:
            await started.wait()
        await asyncio.sleep(after_s)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            started.set()

    await asyncio.wait_for(asgi(scope, receive, send), 5)
    return sent


async def _disconnects(client: Any, stage: str) -> float:
    text = (await client.get("/metrics")).text
    prefix = f'glimpse_client_disconnects_total{{stage="{stage}"}} '
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return float(lines[0].removeprefix(prefix)) if lines else 0.0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
async def test_a_client_that_leaves_while_waiting_frees_its_slot_at_once(make_client: ClientFactory, stream):
    engine = StallingEngine()
    async with make_client(engine) as client:
        started = time.monotonic()
        await _call_then_hang_up(client.asgi, _body(stream), after_s=0.2)
        assert time.monotonic() - started < 3
        assert engine.in_flight == 0
        assert await _disconnects(client, "waiting") == 1


async def test_a_client_that_leaves_mid_stream_frees_its_slot_and_is_counted(make_client: ClientFactory):
    engine = StallingEngine(first_word=True)
    async with make_client(engine) as client:
        sent = await _call_then_hang_up(client.asgi, _body(True), after_start=True)
        assert sent[0]["status"] == 200
        await assert_engine_idle(engine)
        assert await _disconnects(client, "streaming") == 1
        assert await _disconnects(client, "waiting") == 0


async def test_a_finished_stream_is_not_counted_as_a_disconnect(make_client: ClientFactory):
    async with make_client(FakeEngine()) as client:
        response = await client.post("/v1/chat/completions", json=_body(True))
        assert response.status_code == 200
        assert "[DONE]" in response.text
        assert await _disconnects(client, "streaming") == 0


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "json"])
@pytest.mark.parametrize("first_word", [False, True], ids=["before-first-event", "mid-stream"])
async def test_the_request_deadline_ends_whatever_the_engine_waits_on(
    make_client: ClientFactory, stream, first_word
):
    engine = StallingEngine(first_word=first_word)
    settings = Settings(server=ServerSettings(request_timeout_s=0.5))
    async with make_client(engine, settings) as client:
        started = time.monotonic()
        response = await asyncio.wait_for(client.post("/v1/chat/completions", json=_body(stream)), 5)
        waited = time.monotonic() - started
    assert waited < 3
    if stream and first_word:  # the 200 was sent: the error is the stream's last event
        assert response.status_code == 200
        assert "deadline_exceeded" in response.text
    else:
        assert response.status_code == 504, response.text
        assert response.json()["error"]["code"] == "deadline_exceeded"


async def test_the_watchdog_fails_a_test_that_leaves_a_request_behind():
    engine = FakeEngine()
    engine.in_flight = 1  # a slot nobody gave back
    with pytest.raises(AssertionError, match="running=1"):
        await assert_engine_idle(engine, deadline_s=0.1)


# --- the reproduction on the real tiny model ----------------------------------------


async def _until_ready(client: Any, deadline_s: float = 120) -> None:
    stop = time.monotonic() + deadline_s
    while (await client.get("/readyz")).status_code != 200:
        assert time.monotonic() < stop, "the tiny model did not load"
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_typed_image_placeholders_with_an_image_are_answered_and_leave_nothing_behind(
    make_client: ClientFactory, tmp_path_factory: pytest.TempPathFactory
):
    from glimpse.config import EngineSettings
    from glimpse.engine.hf import HFEngine
    from glimpse.engine.tiny_model import ensure_random_tiny_model

    directory = ensure_random_tiny_model(tmp_path_factory.mktemp("tiny") / "glm46v")
    engine = HFEngine(EngineSettings(model=str(directory), device="cpu", warmup=False))
    url = f"data:image/png;base64,{png_b64()}"

    def body(n: int) -> dict[str, Any]:
        content = [
            {"type": "image_url", "image_url": {"url": url}},
            {"type": "text", "text": f"<|image|> what is this {n}"},
        ]
        return {"messages": [{"role": "user", "content": content}], "stream": True, "max_tokens": 8}

    async with make_client(engine) as client:
        await _until_ready(client)
        posts = (client.post("/v1/chat/completions", json=body(n)) for n in range(5))
        responses = await asyncio.wait_for(asyncio.gather(*posts), 120)
        ready = (await client.get("/readyz")).json()
    for response in responses:
        assert response.status_code == 200, response.text
        assert response.text.rstrip().endswith("data: [DONE]")
        assert '"finish_reason": "' in response.text or '"finish_reason":"' in response.text
    assert ready["queue_depth"] == 0
    assert ready["running"] == 0
