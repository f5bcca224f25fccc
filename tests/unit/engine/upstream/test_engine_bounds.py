"""What an upstream sends is bounded, and what it says is not passed on raw.

Issue 12, F11: a 300 MB error body or event line was held in memory (1.2-1.5 GB),
and an upstream ignoring ``max_tokens`` had 46 MB relayed for ``max_tokens=16``.
F10: an upstream's 5xx body (a traceback) reached the client verbatim, and its
``Retry-After: 99999999999`` was passed on.
"""

import functools

import httpx
import pytest

from glimpse.engine.protocol import FinishReason
from glimpse.errors import Overloaded, RateLimited, UpstreamError

from ._fakes import Flood, answer, chunk, collect, make_request, text_of

MIB = 1024 * 1024
PIECE = 64 * 1024
SECRETS = ("Traceback", "/srv/", "GLIMPSE_ENGINE__UPSTREAM_API_KEY", "http://")


@pytest.fixture
def make(harnesses):
    return functools.partial(harnesses, hosts=("a",))


def flood_with(h, host, status, flood, headers=None):
    async def chat(request, body):
        return httpx.Response(status, headers=headers or {"content-type": "text/event-stream"}, stream=flood)

    h[host].chat = chat


async def test_a_huge_error_body_is_read_only_up_to_its_bound(make):
    h = await make()
    flood = Flood(b"x" * PIECE, 32 * MIB // PIECE)  # 32 MiB; the report sent 300 MB
    flood_with(h, "a", 500, flood, {"content-type": "text/plain"})
    with pytest.raises(UpstreamError, match=r"upstream failed \(500\)"):
        await collect(h.engine, make_request())
    assert flood.sent <= 64 * 1024 + PIECE  # max_error_body_bytes and one read


async def test_an_endless_event_line_is_an_error_once_past_its_bound(make):
    h = await make()
    flood = Flood(b"x" * PIECE, 32 * MIB // PIECE, head=b'data: {"choices": [{"delta": {"content": "')
    flood_with(h, "a", 200, flood)
    with pytest.raises(UpstreamError, match=f"event line longer than {MIB} bytes"):
        await collect(h.engine, make_request())
    assert flood.sent <= MIB + 2 * PIECE
    assert h.upstream("a").breaker.consecutive_failures == 1  # a broken protocol is its own fault


async def test_an_answer_past_its_size_bound_is_an_error(make):
    h = await make()
    # Events that carry no token at all (keep-alive comments, empty choices), 32 MiB of them.
    piece = (b": keep-alive\n" + b'data: {"choices": []}\n\n') * 1000
    flood = Flood(piece, 32 * MIB // len(piece))
    flood_with(h, "a", 200, flood)
    limit = MIB + 4096 * 16  # max_event_bytes + response_bytes_per_token * max_tokens
    with pytest.raises(UpstreamError, match=f"passed {limit} bytes"):
        await collect(h.engine, make_request(max_new_tokens=16))
    assert flood.sent <= limit + len(piece)


async def test_an_upstream_ignoring_max_tokens_is_cut_with_finish_length(make):
    h = await make()
    flood = Flood(chunk("token "), 100_000)
    flood_with(h, "a", 200, flood)
    events = await collect(h.engine, make_request(max_new_tokens=16))
    assert text_of(events) == "token " * 16
    assert len(events) == 17
    assert events[-1].finish_reason is FinishReason.LENGTH
    assert events[-1].completion_tokens == 16
    assert flood.closed  # the upstream learns to stop: its connection is closed
    assert flood.sent < 100 * len(chunk("token "))
    assert h.upstream("a").breaker.consecutive_failures == 0


async def test_reasoning_chunks_count_towards_max_tokens(make):
    h = await make()
    thought = b'data: {"choices": [{"delta": {"reasoning_content": "hmm "}, "finish_reason": null}]}\n\n'
    flood_with(h, "a", 200, Flood(thought, 1000))
    events = await collect(h.engine, make_request(max_new_tokens=4))
    assert "".join(e.reasoning for e in events) == "hmm " * 4
    assert events[-1].finish_reason is FinishReason.LENGTH


async def test_an_answer_at_exactly_max_tokens_is_relayed_whole(make):
    h = await make()

    async def exact(request, body):
        return h["a"].stream(answer("a", "b", "c", finish="length", usage=(9, 3)))

    h["a"].chat = exact
    events = await collect(h.engine, make_request(max_new_tokens=3))
    assert text_of(events) == "abc"
    assert (events[-1].finish_reason, events[-1].completion_tokens) == (FinishReason.LENGTH, 3)


async def test_a_compressed_answer_is_refused_and_identity_is_asked_for(make):
    h = await make()
    h["a"].chat = lambda request, body: _gzip_response()
    with pytest.raises(UpstreamError, match="compressed"):
        await collect(h.engine, make_request())
    assert h["a"].chat_headers[-1]["accept-encoding"] == "identity"


async def _gzip_response():
    return httpx.Response(
        200,
        headers={"content-type": "text/event-stream", "content-encoding": "gzip"},
        stream=Flood(b"\x1f\x8b" + b"\0" * 100, 1),
    )


async def test_upstream_5xx_bodies_and_names_never_reach_the_client(make):
    h = await make(hosts=("a", "b"))
    body = (
        "Traceback (most recent call last):\n"
        '  File "/srv/glimpse/api/app.py", line 12\n'
        "KeyError: 'GLIMPSE_ENGINE__UPSTREAM_API_KEY'"
    )
    for host in ("a", "b"):

        async def crash(request, _body):
            return httpx.Response(500, text=body)

        h[host].chat = crash
    with pytest.raises(UpstreamError) as info:
        await collect(h.engine, make_request())
    assert "500" in info.value.message
    assert not [s for s in SECRETS if s in info.value.message], info.value.message


async def test_connection_failures_do_not_name_the_upstream_to_the_client(make):
    h = await make(hosts=("a", "b"))
    for host in ("a", "b"):
        h[host].down = True
    with pytest.raises(UpstreamError) as info:
        await collect(h.engine, make_request())
    assert "could not connect" in info.value.message
    assert "http://" not in info.value.message
    assert "http://a:8000" in h.engine.health().detail  # operators still see which one


async def test_an_error_event_is_summarised_for_the_client(make):
    h = await make()

    async def oom(request, body):
        return h["a"].stream([chunk("x"), b'data: {"error": {"message": "CUDA OOM at /srv/w.py"}}\n\n'])

    h["a"].chat = oom
    with pytest.raises(UpstreamError, match="failed during the answer") as info:
        await collect(h.engine, make_request())
    assert "/srv/" not in info.value.message


@pytest.mark.parametrize(
    ("status", "kind"),
    [(503, Overloaded), (429, RateLimited)],
)
async def test_an_upstreams_huge_retry_after_is_clamped(make, status, kind):
    h = await make()

    async def busy(request, body):
        return httpx.Response(status, headers={"retry-after": "99999999999"}, json={})

    h["a"].chat = busy
    with pytest.raises(kind) as info:
        await collect(h.engine, make_request())
    assert info.value.retry_after == 60


async def test_a_huge_models_list_fails_the_health_check_within_its_bound(make):
    h = await make()
    flood = Flood(b" " * PIECE, 32 * MIB // PIECE, head=b'{"data": [')
    h["a"].models_stream = flood
    upstream = h.upstream("a")
    upstream.model = None  # rediscover
    assert not await h.engine.health_checker.check(upstream)
    assert f"more than {MIB} bytes" in upstream.last_error
    assert flood.sent <= MIB + 2 * PIECE
