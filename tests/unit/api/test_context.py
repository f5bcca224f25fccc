"""The request context: made from the head by the observer middleware, found by every later layer."""

from __future__ import annotations

import time

import pytest
from starlette.types import Message, Receive, Scope, Send

from glimpse.api.context import RequestContext, request_context
from glimpse.api.middleware import RequestObserverMiddleware
from glimpse.api.service import CacheStatus
from glimpse.config import GuardSettings
from glimpse.guard import AuditLog, AuditReader, Principal
from glimpse.obs import Metrics


def _scope(*headers: tuple[bytes, bytes], path: str = "/infer") -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": list(headers),
        "client": ("10.0.0.7", 1),
    }


def test_the_head_gives_the_request_id_the_arrival_and_the_cache_control():
    before = time.monotonic()
    context = RequestContext.from_scope(
        _scope((b"x-request-id", b"abc-123"), (b"cache-control", b"No-Store"))
    )
    assert context.request_id == "abc-123"
    assert before <= context.arrived_at <= time.monotonic()
    assert context.no_cache
    assert not RequestContext.from_scope(_scope((b"cache-control", b"max-age=0"))).no_cache


def test_an_unsafe_request_id_is_replaced():
    context = RequestContext.from_scope(_scope((b"x-request-id", b"evil\r\nSet-Cookie: x")))
    assert "\n" not in context.request_id
    assert context.request_id != "evil\r\nSet-Cookie: x"


def test_two_engine_requests_from_one_request_id_differ():
    context = RequestContext.from_scope(_scope((b"x-request-id", b"same")))
    first, second = context.engine_request_id(), context.engine_request_id()
    assert first.startswith("same.")
    assert first != second


def test_a_scope_that_never_met_the_middleware_has_no_context():
    with pytest.raises(LookupError):
        request_context(_scope())


async def test_the_middleware_attaches_one_context_and_audits_and_logs_from_it(tmp_path):
    seen: list[RequestContext] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        context = request_context(scope)
        seen.append(context)
        context.route_path = "/infer"  # as admission leaves it
        context.principal = Principal("key:a", "a", auth_method="api_key")
        context.cache = CacheStatus.HIT
        context.tokens_in, context.tokens_out = 7, 3
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    audit = AuditLog(GuardSettings(audit_log_path=tmp_path / "audit.sqlite3"))
    scope = _scope((b"x-request-id", b"req-9"))
    await RequestObserverMiddleware(app, Metrics(), audit)(scope, receive, send)
    await audit.aclose()

    assert seen == [request_context(scope)]
    assert (b"x-request-id", b"req-9") in sent[0]["headers"]
    with AuditReader(tmp_path / "audit.sqlite3") as reader:
        (row,) = reader.tail(5)
    assert (row["request_id"], row["client_id"], row["route"], row["status"]) == (
        "req-9",
        "key:a",
        "/infer",
        200,
    )
    assert (row["tokens_in"], row["tokens_out"]) == (7, 3)
