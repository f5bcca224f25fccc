"""Shedding inside the HTTP protocol: only whole, plainly framed requests; the connection stays usable."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import pytest
import uvicorn
from tests.fakes import FakeEngine

from glimpse.api.admission import Admission
from glimpse.api.h11_shed import SheddingH11Protocol, parse_whole_post
from glimpse.api.shedding import LoadShedder
from glimpse.config import EngineSettings, Settings
from glimpse.obs import Metrics

PATHS = frozenset({b"/infer", b"/v1/chat/completions"})


def _request(path: str = "/infer", body: bytes = b'{"text": "q"}', **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_a_whole_plain_post_is_recognised():
    request = parse_whole_post(_request(x_request_id="r1", origin="https://a.example"), PATHS)
    assert request is not None
    assert request.path == b"/infer"
    assert request.request_id == b"r1"
    assert request.origin
    assert not request.close
    closing = parse_whole_post(_request(connection="close"), PATHS)
    assert closing is not None
    assert closing.close


@pytest.mark.parametrize(
    "data",
    [
        _request()[:-1],  # the body is not all here
        _request() + _request(),  # pipelined: h11 handles the second
        _request("/v1/models"),  # not a generation route
        _request("/infer?x=1"),  # a query string: h11 and the router decide
        _request().replace(b"HTTP/1.1", b"HTTP/1.0"),
        _request().replace(b"POST", b"GET", 1),
        _request(transfer_encoding="chunked"),
        _request(expect="100-continue"),
        _request(upgrade="websocket"),
        _request().replace(b"\r\n\r\n", b"\r\nContent-Length: 14\r\n\r\n", 1),  # repeated length
        _request().replace(b"Host: 127.0.0.1", b"Host: 127.0.0.1\r\n folded"),
        _request().replace(b"Host: 127.0.0.1", b"Host : 127.0.0.1"),
        _request().replace(b"Host: 127.0.0.1", b"no colon here"),
        b"POST /infer HTTP/1.1\r\nHost: x\r\n\r\n",  # no Content-Length
        b"POST /infer HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    ],
)
def test_anything_less_plain_is_left_to_h11(data):
    assert parse_whole_post(data, PATHS) is None


class App:
    """Answers 200 to whatever reaches it, and counts."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@contextlib.asynccontextmanager
async def _server(busy: int) -> AsyncIterator[tuple[App, FakeEngine, LoadShedder, int]]:
    settings = Settings(engine=EngineSettings(max_queue=0, max_batch_size=1))
    engine = FakeEngine()
    engine.in_flight = busy
    state = SimpleNamespace(engine=engine)
    shedder = LoadShedder(Admission(settings), Metrics(), lambda: state)  # type: ignore[arg-type,return-value]

    class Protocol(SheddingH11Protocol):
        pass

    Protocol.shedder = shedder
    app = App()
    config = uvicorn.Config(app, host="127.0.0.1", port=0, http=Protocol, lifespan="off", log_config=None)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield app, engine, shedder, port
    finally:
        server.should_exit = True
        await task


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> tuple[int, dict]:
    writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    await reader.readexactly(int(headers["content-length"]))
    return int(lines[0].split()[1]), headers


async def test_at_capacity_a_whole_request_gets_503_and_the_connection_serves_the_next():
    async with _server(busy=1) as (app, engine, shedder, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        first = await _exchange(reader, writer, _request(x_request_id="abc"))
        second = await _exchange(reader, writer, _request("/v1/chat/completions"))
        engine.in_flight = 0  # room again: the same connection reaches the app through h11
        third = await _exchange(reader, writer, _request())
        writer.close()
    assert first[0] == second[0] == 503
    assert first[1]["retry-after"] == "1"
    assert first[1]["x-request-id"] == "abc"
    assert first[1]["content-type"] == "application/json"
    assert third[0] == 200
    assert app.calls == 1
    registry = shedder.metrics.registry
    assert registry.get_sample_value("glimpse_rejected_requests_total", {"reason": "overloaded"}) == 2


async def test_connection_close_is_honoured():
    async with _server(busy=1) as (_, _, _, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        status, headers = await _exchange(reader, writer, _request(connection="close"))
        assert await reader.read() == b""  # closed by the server
        writer.close()
    assert status == 503
    assert headers["connection"] == "close"


async def test_requests_that_are_not_plain_reach_the_app():
    """Here the app stands in for the full path (where admission refuses them at capacity)."""
    async with _server(busy=1) as (app, _, _, port):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_request() + _request())  # pipelined
        for _ in range(2):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            await reader.readexactly(2)
        writer.close()
    assert app.calls == 2
