"""The load shedder: a generation request that finds the engine full gets a prebuilt 503, cheaply."""

from __future__ import annotations

import asyncio
import json
import logging
from types import SimpleNamespace
from typing import Any

import pytest
from tests.fakes import FakeEngine

from glimpse.api import shedding
from glimpse.api.admission import Admission
from glimpse.api.shedding import SMALL_BODY_BYTES, LoadShedder
from glimpse.config import EngineSettings, Settings
from glimpse.obs import Metrics


def _scope(path: str = "/v1/chat/completions", method: str = "POST", **headers: str) -> dict[str, Any]:
    raw = [(name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()]
    return {"type": "http", "method": method, "path": path, "headers": raw}


def _shedder(busy: int, *, capacity: int = 2, ready: bool = True, cors: bool = False) -> LoadShedder:
    settings = Settings(engine=EngineSettings(max_queue=capacity - 1, max_batch_size=1))
    engine = FakeEngine(ready=ready)
    engine.in_flight = busy  # FakeEngine reports it as running
    state = SimpleNamespace(engine=engine)
    return LoadShedder(Admission(settings), Metrics(), lambda: state, cors=cors)  # type: ignore[arg-type,return-value]


class Sent:
    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.messages[0]["headers"])


async def _no_body() -> dict[str, Any]:
    raise AssertionError("the body must not be read")


@pytest.mark.parametrize(
    ("path", "method"), [("/v1/chat/completions", "POST"), ("/infer", "POST"), ("/v1/analyze", "POST")]
)
def test_generation_routes_are_shed_at_capacity(path, method):
    assert _shedder(busy=2).refuses(_scope(path, method))
    assert not _shedder(busy=1).refuses(_scope(path, method))


@pytest.mark.parametrize(
    ("path", "method"), [("/v1/models", "GET"), ("/readyz", "GET"), ("/metrics", "GET"), ("/infer", "GET")]
)
def test_other_routes_are_never_shed(path, method):
    assert not _shedder(busy=5).refuses(_scope(path, method))


def test_a_loading_engine_is_left_to_admission():
    """Not-ready has its own message and Retry-After, given by admission."""
    assert not _shedder(busy=5, ready=False).refuses(_scope())


def test_before_the_state_exists_nothing_is_shed():
    shedder = _shedder(busy=5)
    shedder.app_state = lambda: None
    assert not shedder.refuses(_scope())


def test_cross_origin_requests_take_the_full_path_when_cors_is_on():
    """A browser reads a cross-origin 503 only with the CORS headers the full path adds."""
    assert not _shedder(busy=5, cors=True).refuses(_scope(origin="https://app.example"))
    assert _shedder(busy=5, cors=True).refuses(_scope())
    assert _shedder(busy=5, cors=False).refuses(_scope(origin="https://app.example"))


async def test_the_refusal_is_openais_error_shape_with_retry_after():
    shedder, sent = _shedder(busy=2), Sent()
    await shedder.refuse(_scope(x_request_id="abc-123"), _no_body, sent)
    start, body = sent.messages
    assert start["status"] == 503
    assert sent.headers[b"retry-after"] == b"1"
    assert sent.headers[b"x-request-id"] == b"abc-123"
    assert sent.headers[b"x-content-type-options"] == b"nosniff"
    assert int(sent.headers[b"content-length"]) == len(body["body"])
    error = json.loads(body["body"])["error"]
    assert error["code"] == "overloaded"
    assert error["type"]
    assert error["message"]


async def test_an_unsafe_request_id_is_replaced():
    shedder, sent = _shedder(busy=2), Sent()
    await shedder.refuse(_scope(x_request_id="bad\nid"), _no_body, sent)
    assert sent.headers[b"x-request-id"] != b"bad\nid"
    assert sent.headers[b"x-request-id"]


async def test_a_small_body_that_has_arrived_is_consumed_so_the_connection_stays_open():
    chunks = [
        {"type": "http.request", "body": b"{", "more_body": True},
        {"type": "http.request", "body": b"}", "more_body": False},
    ]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0)

    await _shedder(busy=2).refuse(_scope(content_length="2"), receive, Sent())
    assert chunks == []


async def test_a_body_still_on_its_way_is_not_waited_for():
    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    sent = Sent()
    async with asyncio.timeout(1):
        await _shedder(busy=2).refuse(_scope(content_length="100"), receive, sent)
    assert sent.messages[0]["status"] == 503


@pytest.mark.parametrize(
    "headers", [{"content_length": str(SMALL_BODY_BYTES + 1)}, {"transfer_encoding": "chunked"}]
)
async def test_a_large_or_chunked_body_is_never_touched(headers):
    sent = Sent()
    await _shedder(busy=2).refuse(_scope(**headers), _no_body, sent)
    assert sent.messages[0]["status"] == 503


async def test_shed_requests_are_counted_each_and_logged_once_a_second(monkeypatch, caplog):
    monkeypatch.setattr(shedding, "LOG_EVERY_S", 0.05)
    shedder = _shedder(busy=2)
    with caplog.at_level(logging.WARNING, logger="glimpse.access"):
        for _ in range(5):
            await shedder.refuse(_scope(), _no_body, Sent())
        await asyncio.sleep(0.15)
        await shedder.refuse(_scope(), _no_body, Sent())
        await asyncio.sleep(0.15)
    lines = [record for record in caplog.records if record.getMessage().startswith("shed ")]
    assert [getattr(record, "shed", None) for record in lines] == [5, 1]
    registry = shedder.metrics.registry
    assert registry.get_sample_value("glimpse_rejected_requests_total", {"reason": "overloaded"}) == 6
    labels = {"route": "/v1/chat/completions", "status": "503"}
    assert registry.get_sample_value("glimpse_http_requests_total", labels) == 6
