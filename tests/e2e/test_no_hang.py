"""Issue 12, F1 against a real server: nothing hangs, and clients that give up free their places.

The reproduction from the issue: five streamed chats, each with one image and
the text ``<|image|> what is this N``, client timeout 2 s, then ``/readyz``.
Before the fix every one of them hung for ever and ``/readyz`` showed
``queue_depth`` 5 with nothing running.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.e2e.harness import GlimpseServer
from tests.images import png_b64

_URL = f"data:image/png;base64,{png_b64()}"


@pytest.fixture(scope="module")
def one_slot_server(
    tiny_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GlimpseServer]:
    """One request runs at a time, so others wait in the queue."""
    env = {**tiny_env, "GLIMPSE_ENGINE__MAX_BATCH_SIZE": "1"}
    log = tmp_path_factory.mktemp("logs") / "no_hang.log"
    with GlimpseServer(["--model", "tiny"], env=env, log_path=log) as server:
        yield server
    text = log.read_text(errors="replace")
    assert "StopIteration" not in text
    assert "Traceback" not in text, text[text.index("Traceback") - 300 :][:4000]


def _chat(text: str, **extra: Any) -> dict[str, Any]:
    content = [{"type": "image_url", "image_url": {"url": _URL}}, {"type": "text", "text": text}]
    return {"messages": [{"role": "user", "content": content}], "stream": True, **extra}


async def _stream(base_url: str, body: dict[str, Any], client_timeout: float) -> str | int:
    """The streamed text, or the status when the answer is not a 200."""
    async with (
        httpx.AsyncClient(timeout=client_timeout) as client,
        client.stream("POST", f"{base_url}/v1/chat/completions", json=body) as response,
    ):
        if response.status_code != 200:
            return response.status_code
        return "".join([line async for line in response.aiter_lines()])


def _ready(server: GlimpseServer) -> dict[str, Any]:
    return dict(httpx.get(f"{server.base_url}/readyz", timeout=5).json())


def test_the_issues_reproduction_is_answered_and_leaves_the_queue_empty(one_slot_server: GlimpseServer):
    async def burst() -> list[str | int]:
        bodies = [_chat(f"<|image|> what is this {n}", max_tokens=8) for n in range(5)]
        return await asyncio.gather(*(_stream(one_slot_server.base_url, b, client_timeout=2) for b in bodies))

    for answer in asyncio.run(burst()):
        assert isinstance(answer, str), answer
        assert answer.endswith("data: [DONE]")
    ready = _ready(one_slot_server)
    assert (ready["queue_depth"], ready["running"]) == (0, 0)


def test_clients_that_give_up_in_the_queue_free_their_places_at_once(one_slot_server: GlimpseServer):
    server = one_slot_server
    before = server.metric("glimpse_client_disconnects_total", stage="waiting")
    stop_long = threading.Event()

    def long_answer() -> None:  # holds the only running place until told to stop
        body = _chat("Describe the image.", max_tokens=4000, ignore_eos=True)
        with (
            httpx.Client(timeout=60) as client,
            client.stream("POST", f"{server.base_url}/v1/chat/completions", json=body) as response,
        ):
            for _ in response.iter_lines():
                if stop_long.is_set():
                    return

    runner = threading.Thread(target=long_answer, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 30
        while _ready(server)["running"] != 1:
            assert time.monotonic() < deadline, "the long answer did not start"
            time.sleep(0.05)

        async def give_up() -> list[BaseException | str | int]:
            bodies = [_chat(f"what is this {n}", max_tokens=8) for n in range(5)]
            calls = (_stream(server.base_url, b, client_timeout=1) for b in bodies)
            return await asyncio.gather(*calls, return_exceptions=True)

        for outcome in asyncio.run(give_up()):
            assert isinstance(outcome, httpx.ReadTimeout), outcome
        deadline = time.monotonic() + 3
        while (ready := _ready(server))["queue_depth"] != 0:
            assert time.monotonic() < deadline, f"the queue kept the clients that left: {ready}"
            time.sleep(0.05)
        assert ready["running"] == 1  # the long answer still runs: nobody waited for it
        after = server.metric("glimpse_client_disconnects_total", stage="waiting")
        assert after - before == 5
    finally:
        stop_long.set()
        runner.join(60)
    deadline = time.monotonic() + 10
    while (ready := _ready(server))["running"] != 0:
        assert time.monotonic() < deadline, f"the abandoned stream kept running: {ready}"
        time.sleep(0.05)
