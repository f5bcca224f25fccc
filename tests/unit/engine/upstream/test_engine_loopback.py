"""The upstream engine over real loopback sockets, against a stand-in server.

The stand-in is built on the standard library's ``http.server`` (threads, blocking
sockets), not on Glimpse's stack, so these tests show that the engine relies only
on the OpenAI wire format: streaming, data-URL images, aborting on disconnect
(the server sees its socket closed) and failover when a port stops answering.
"""

import asyncio
import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from glimpse.config import EngineSettings, UpstreamSettings
from glimpse.engine.protocol import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    ImagePart,
    SamplingParams,
    TextPart,
)
from glimpse.engine.upstream import UpstreamEngine
from glimpse.errors import UpstreamTimeout

from ._fakes import make_request


class StandIn(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.bodies: list[dict] = []
        self.aborted = threading.Event()
        self.dead = False
        self.thread = threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def close(self) -> None:
        """Stop listening, and let kept-alive connections drop their next request unanswered,
        as a killed process would."""
        self.dead = True
        self.shutdown()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: StandIn

    def log_message(self, format, *args):
        pass

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.server.dead:
            self.close_connection = True
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "standin-model", "object": "model"}]})
        else:
            self._json(404, {"detail": "no such path"})  # no /health here: the engine must fall back

    def _event(self, payload) -> None:
        data = payload if isinstance(payload, str) else json.dumps(payload)
        self.wfile.write(f"data: {data}\n\n".encode())
        self.wfile.flush()

    def do_POST(self):
        if self.server.dead:
            self.close_connection = True
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        prompt = json.dumps(body["messages"])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")  # body ends when the connection does
        self.end_headers()
        if "silent" in prompt:
            time.sleep(1.0)
            return
        words = ["tick "] * 400 if "slow" in prompt else ["stand-in ", "says ", "hi"]
        try:
            for word in words:
                self._event({"choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]})
                if "slow" in prompt:
                    time.sleep(0.01)
            self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            self._event({"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": len(words)}})
            self._event("[DONE]")
        except (BrokenPipeError, ConnectionResetError):
            self.server.aborted.set()
        self.close_connection = True


@pytest.fixture
def standins():
    servers = [StandIn(), StandIn()]
    yield servers
    for server in servers:
        server.close()


def make_engine(*urls: str, **options) -> UpstreamEngine:
    settings = EngineSettings(kind="upstream", model="GLM-4.6V-Flash")
    # Least outstanding: the failover test needs requests to reach the server it stops.
    options = {"routing_policy": "least_outstanding"} | options
    return UpstreamEngine(settings, UpstreamSettings(urls=urls, health_interval_s=3600, **options))


async def test_streams_from_an_independent_server_with_an_image(standins):
    engine = make_engine(standins[0].url)
    await engine.start()
    try:
        assert engine.health().ready
        image = Image.new("RGB", (12, 10), (10, 200, 30))
        request = GenerationRequest(
            request_id="r1",
            messages=(ChatMessage(role="user", content=(ImagePart(image, "0" * 64), TextPart("Colour?"))),),
            sampling=SamplingParams(max_new_tokens=16),
        )
        events = [event async for event in engine.submit(request)]
    finally:
        await engine.stop()
    assert "".join(e.text for e in events) == "stand-in says hi"
    assert events[-1].finish_reason is FinishReason.STOP
    assert (events[-1].prompt_tokens, events[-1].completion_tokens) == (5, 3)
    body = standins[0].bodies[0]
    assert body["model"] == "standin-model"
    url = body["messages"][0]["content"][0]["image_url"]["url"]
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert sent.convert("RGB").tobytes() == image.tobytes()


async def test_client_disconnect_closes_the_upstream_socket(standins):
    engine = make_engine(standins[0].url)
    await engine.start()
    try:
        stream = engine.submit(make_request(text="slow please"))
        assert (await anext(stream)).text == "tick "
        await stream.aclose()
        # The server notices on its next write: that is what lets vLLM abort the request.
        assert await asyncio.to_thread(standins[0].aborted.wait, 2.0)
    finally:
        await engine.stop()


async def test_fails_over_when_a_server_goes_away(standins):
    engine = make_engine(standins[0].url, standins[1].url)
    await engine.start()
    try:
        standins[1].close()
        texts = [await _text(engine, make_request(f"r{i}")) for i in range(4)]
        dead = engine.upstreams[1]
    finally:
        await engine.stop()
    assert texts == ["stand-in says hi"] * 4
    assert dead.attempts >= 1
    assert dead.breaker.consecutive_failures >= 1
    assert len(standins[0].bodies) == 4


async def test_real_read_timeout(standins):
    engine = make_engine(standins[0].url, read_timeout_s=0.2)
    await engine.start()
    try:
        with pytest.raises(UpstreamTimeout):
            await _text(engine, make_request(text="silent"))
    finally:
        await engine.stop()


async def _text(engine, request) -> str:
    return "".join([event.text async for event in engine.submit(request)])
