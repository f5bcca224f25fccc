"""A Glimpse gateway in front of three Glimpse nodes, as real processes on loopback.

Proof for the scale-out issue: greedy answers through the gateway equal those of a
node asked directly, and under steady concurrent load a node can be stopped and
restarted with zero failed client requests while traffic moves away and back.

The node is stopped with SIGTERM (graceful: it finishes what it admitted). With
SIGKILL, answers already streaming from that node would break mid-way, and the
gateway never retries once text has reached the client.
"""

from __future__ import annotations

import asyncio
import base64
import io
import signal
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from PIL import Image
from tests.e2e.harness import GlimpseServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

START_TIMEOUT_S = 300.0
CHAT_ROUTE = "/v1/chat/completions"


@pytest.fixture(scope="module")
def cluster(
    tiny_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GlimpseServer, list[GlimpseServer]]]:
    log_dir = tmp_path_factory.mktemp("upstream-e2e")

    def server(name: str, args: list[str]) -> GlimpseServer:
        return GlimpseServer(
            args, env=tiny_env, log_path=log_dir / f"{name}.log", ready_timeout=START_TIMEOUT_S
        )

    nodes = [server(f"node{i}", ["--model", "tiny"]) for i in range(3)]
    upstream_args = [arg for node in nodes for arg in ("--upstream", node.base_url)]
    # Least outstanding: these tests need traffic on every node (one image and one question would
    # all go to one node under cache-aware routing).
    gateway = GlimpseServer(
        ["--engine", "upstream", *upstream_args],
        env={**tiny_env, "GLIMPSE_UPSTREAM__ROUTING_POLICY": "least_outstanding"},
        log_path=log_dir / "gateway.log",
        ready_timeout=START_TIMEOUT_S,
    )
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()
        gateway.start().wait_ready()
        yield gateway, nodes
    finally:
        for process in (gateway, *nodes):
            process.stop(timeout=10, sig=signal.SIGKILL)


def _image_data_url() -> str:
    image = Image.new("RGB", (64, 48))
    image.putdata([((x * 4) % 256, (y * 5) % 256, 128) for y in range(48) for x in range(64)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


IMAGE_URL = _image_data_url()


def _client(base_url: str) -> openai.AsyncOpenAI:
    # no-cache: identical greedy questions would otherwise be answered by the gateway's result
    # cache, and no request would reach the nodes this test stops and restarts.
    return openai.AsyncOpenAI(
        base_url=f"{base_url}/v1",
        api_key="unused",
        max_retries=0,
        timeout=120.0,
        default_headers={"Cache-Control": "no-cache"},
    )


async def _model(client: openai.AsyncOpenAI) -> str:
    models = await client.models.list()
    return models.data[0].id


async def _ask(client: openai.AsyncOpenAI, model: str, question: str, *, stream: bool) -> str:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": IMAGE_URL}},
                {"type": "text", "text": question},
            ],
        }
    ]
    if not stream:
        reply = await client.chat.completions.create(
            model=model, messages=messages, max_tokens=8, temperature=0.0
        )
        return reply.choices[0].message.content or ""
    parts = []
    chunks = await client.chat.completions.create(
        model=model, messages=messages, max_tokens=8, temperature=0.0, stream=True
    )
    async for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


async def test_greedy_answers_through_the_gateway_equal_a_node_asked_directly(cluster):
    gateway, nodes = cluster
    node_client, gateway_client = _client(nodes[0].base_url), _client(gateway.base_url)
    node_model, gateway_model = await _model(node_client), await _model(gateway_client)
    for question in ("What is in this picture?", "Describe the colours."):
        direct = await _ask(node_client, node_model, question, stream=False)
        assert direct
        # Six requests spread over all three nodes (least outstanding, round-robin on ties).
        through = [await _ask(gateway_client, gateway_model, question, stream=i % 2 == 0) for i in range(6)]
        assert through == [direct] * 6


async def test_stopping_and_restarting_a_node_under_load_fails_no_request(cluster):
    gateway, nodes = cluster
    client = _client(gateway.base_url)
    model = await _model(client)
    question = "What is in this picture?"
    expected = await _ask(
        _client(nodes[0].base_url), await _model(_client(nodes[0].base_url)), question, stream=False
    )
    answers: list[str] = []
    failures: list[BaseException] = []
    running = True

    async def worker(index: int) -> None:
        while running:
            try:
                answers.append(await _ask(client, model, question, stream=index % 2 == 0))
            except Exception as exc:  # every failure is a test failure, collected to report them all
                failures.append(exc)

    workers = [asyncio.create_task(worker(i)) for i in range(6)]
    try:
        await asyncio.sleep(3)
        before_stop = len(answers)
        victim = nodes[1]
        await asyncio.to_thread(victim.stop)
        await asyncio.sleep(6)  # traffic runs on the two others
        during_outage = len(answers) - before_stop
        await asyncio.to_thread(victim.start)
        await asyncio.to_thread(victim.wait_ready)
        deadline = time.monotonic() + 60
        while await asyncio.to_thread(victim.metric, "glimpse_http_requests_total", route=CHAT_ROUTE) == 0:
            assert time.monotonic() < deadline, (
                f"traffic never came back to the restarted node\n{gateway.log()}"
            )
            await asyncio.sleep(0.5)
    finally:
        running = False
        await asyncio.gather(*workers)
    assert failures == [], f"{len(failures)} failed requests, first: {failures[:3]!r}\n{gateway.log()}"
    assert before_stop > 0
    assert during_outage > 0
    assert set(answers) == {expected}
    async with httpx.AsyncClient(timeout=5.0) as http:
        assert (await http.get(f"{gateway.base_url}/readyz")).status_code == 200
    for process in (gateway, *nodes):  # handled failures are log lines, never tracebacks
        assert "Traceback" not in process.log_path.read_text(errors="replace"), process.log()


async def test_a_burst_of_requests_every_node_would_fail_takes_no_node_out(cluster):
    """Issue 12, F2: six requests with an image in a system turn, sent in 0.3 s, made the nodes
    answer 500 and opened both circuits of the gateway for 5 s: every user then got 503."""
    gateway, _ = cluster
    hostile = {
        "max_tokens": 4,
        "messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": IMAGE_URL}}]},
            {"role": "user", "content": "What is in this picture?"},
        ],
    }
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60.0) as http:
        burst = await asyncio.gather(*(http.post(CHAT_ROUTE, json=hostile) for _ in range(12)))
        assert {response.status_code for response in burst} == {400}
        assert "'user' messages only" in burst[0].json()["error"]["message"]
        client = _client(gateway.base_url)
        model = await _model(client)
        for _ in range(3):  # every node still in rotation: no 503 for the next users
            assert await _ask(client, model, "What is in this picture?", stream=False)
        assert (await http.get("/readyz")).status_code == 200
