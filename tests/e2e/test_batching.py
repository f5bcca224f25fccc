"""Many concurrent, mixed requests over HTTP: each answer equals its own ``model.generate``."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import socket
import time

import httpx
from tests.e2e.reference import generate_directly
from tests.images import png_b64, png_bytes

QUESTIONS = (
    "What is in the picture?",
    "这张图片里有什么？",
    "Describe the colours in detail, please.",
    "数一数",
)


def _cases(count: int) -> list[tuple[bytes, str, int]]:
    rng = random.Random(7)
    cases = []
    for _ in range(count):
        size = (rng.choice([56, 100, 160, 240, 320]), rng.choice([56, 90, 200, 280]))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        cases.append((png_bytes(size, colour), rng.choice(QUESTIONS), rng.choice([4, 16, 33, 60])))
    return cases


async def _ask(
    client: httpx.AsyncClient, png: bytes, question: str, max_tokens: int, stream: bool
) -> tuple[str, int]:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": question},
                ],
            }
        ],
        "max_tokens": max_tokens,
        "stream": stream,
        "stream_options": {"include_usage": True},
    }
    headers = {"Cache-Control": "no-cache"}
    if not stream:
        response = await client.post("/v1/chat/completions", json=body, headers=headers)
        assert response.status_code == 200, response.text
        data = response.json()
        return data["choices"][0]["message"]["content"], data["usage"]["completion_tokens"]
    text, tokens = [], 0
    async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                for choice in event["choices"]:
                    text.append(choice["delta"].get("content") or "")
                if event.get("usage"):
                    tokens = event["usage"]["completion_tokens"]
    return "".join(text), tokens


async def test_concurrent_mixed_requests_match_single_request_generate(tiny_server, reference):
    cases = _cases(24)
    expected = [generate_directly(reference, png, q, n) for png, q, n in cases]

    async def staggered(i: int, client: httpx.AsyncClient) -> tuple[str, int]:
        await asyncio.sleep(0.02 * (i % 6))  # requests join while others are running
        png, question, max_tokens = cases[i]
        return await _ask(client, png, question, max_tokens, stream=i % 2 == 0)

    async with httpx.AsyncClient(base_url=tiny_server.base_url, timeout=180) as client:
        answers = await asyncio.gather(*(staggered(i, client) for i in range(len(cases))))
    assert answers == expected


async def test_cancelled_requests_do_not_disturb_the_others(tiny_server, reference):
    cases = _cases(8)
    expected = [generate_directly(reference, png, q, n) for png, q, n in cases]
    async with httpx.AsyncClient(base_url=tiny_server.base_url, timeout=180) as client:

        async def abandoned(png: bytes) -> None:
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(0.3):
                    await _ask(client, png, "a long answer please", 2000, stream=True)

        results = await asyncio.gather(
            *(abandoned(png) for png, _, _ in cases[:4]),
            *(_ask(client, png, q, n, stream=False) for png, q, n in cases),
        )
    assert list(results[4:]) == expected


def test_a_client_that_hangs_up_is_cancelled_quietly(tiny_server):
    """Non-streaming and streaming: the generation stops, no traceback, 499 in the metrics."""

    def running() -> float:
        return tiny_server.metric("glimpse_engine_running_requests")

    def hung_up() -> float:
        return tiny_server.metric("glimpse_http_requests_total", route="/v1/chat/completions", status="499")

    hung_up_before = hung_up()

    for stream in (False, True):
        content = [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png_b64()}},
            {"type": "text", "text": "a very long answer"},
        ]
        body = json.dumps(
            {
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 4000,
                "ignore_eos": True,
                "stream": stream,
            }
        ).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Cache-Control: no-cache\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", tiny_server.port)) as sock:
            sock.sendall(head + body)
            deadline = time.monotonic() + 30
            while running() < 1 and time.monotonic() < deadline:  # generating now
                time.sleep(0.05)
        deadline = time.monotonic() + 30
        while running() > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert running() == 0, "the abandoned generation kept running"
    # The handler records its 499 as it unwinds, a moment after the engine let go. (Only the
    # non-streaming hang-up is a 499: the stream had already been answered 200.)
    deadline = time.monotonic() + 10
    while hung_up() < hung_up_before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hung_up() >= hung_up_before + 1
    assert "Exception in ASGI application" not in tiny_server.log_path.read_text(errors="replace")
