"""Whose fault a failure is: only an upstream's own failures count against its circuit.

Issue 12, F2: an image in a system turn made Glimpse nodes answer 500, and six such
requests in 0.3 s opened both circuits of a gateway for 5 s. F14: a request whose
upstream failed before sending anything got a 502 instead of a try elsewhere.
"""

import functools

import httpx
import pytest
from PIL import Image

from glimpse.engine.protocol import ChatMessage, GenerationRequest, ImagePart, TextPart
from glimpse.engine.upstream import BreakerState
from glimpse.errors import InvalidRequest, UpstreamError

from ._fakes import collect, make_request, make_sampling, text_of

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/glimpse/engine/hf.py", line 88, in _render\n'
    "KeyError: 'GLIMPSE_ENGINE__UPSTREAM_API_KEY'"
)


async def server_error(request, body):
    return httpx.Response(500, text=TRACEBACK)


@pytest.fixture
def make(harnesses):
    return functools.partial(harnesses, hosts=("a", "b", "c"))


def closed_and_clean(harness):
    return all(
        u.breaker.state is BreakerState.CLOSED and u.breaker.consecutive_failures == 0
        for u in harness.engine.upstreams
    )


async def test_a_request_that_fails_on_every_upstream_opens_no_circuit(make):
    h = await make(hosts=("a", "b"))  # failure threshold 2
    for host in ("a", "b"):
        h[host].chat = server_error
    for i in range(6):  # the burst of the report
        with pytest.raises(UpstreamError, match="same way on 2 upstream servers") as info:
            await collect(h.engine, make_request(f"bad-{i}"))
        assert info.value.status_code == 502
    assert closed_and_clean(h)
    assert sum(h.chat_attempts().values()) == 12  # one retry each, never a third try
    for host in ("a", "b"):
        h[host].chat = h[host].default_chat
    assert text_of(await collect(h.engine, make_request("good"))).startswith("Hello from ")
    assert h.engine.health().ready


async def test_a_500_that_another_upstream_does_not_repeat_counts_against_the_first(make):
    h = await make()
    h["a"].chat = server_error
    for i in range(6):
        answer = text_of(await collect(h.engine, make_request(f"r{i}")))
        assert answer in ("Hello from b", "Hello from c")  # every request served (F14)
    assert h.upstream("a").breaker.state is BreakerState.OPEN  # blamed twice, then skipped
    assert h.chat_attempts()["a"] == 2
    assert h.upstream("a").last_error == "upstream failed (500)"
    assert h.upstream("b").breaker.consecutive_failures == 0


async def test_with_a_single_upstream_500s_give_no_verdict_and_health_checks_still_judge(make):
    h = await make(hosts=("a",))
    h["a"].chat = server_error
    for i in range(4):
        with pytest.raises(UpstreamError, match=r"1 upstream\(s\) tried"):
            await collect(h.engine, make_request(f"r{i}"))
    assert closed_and_clean(h)
    # A really broken upstream fails its health checks too, and is taken out by them.
    h["a"].health_status = 500
    for _ in range(2):
        await h.engine.health_checker.check_all()
    assert h.upstream("a").breaker.state is BreakerState.OPEN


async def aim_at(h, host):
    """Every upstream idle picks by rotation: load the others so ``host`` is the pick."""
    for other in h.cluster.upstreams:
        if other != host:
            h.upstream(other).in_flight += 1


async def test_a_half_open_trial_that_500s_is_blamed_only_once_another_upstream_serves(make):
    h = await make()
    h.upstream("a").breaker.trip()
    h.clock.advance(10)
    assert h.upstream("a").breaker.state is BreakerState.HALF_OPEN
    h["a"].chat = server_error
    await aim_at(h, "a")
    assert text_of(await collect(h.engine, make_request("trial"))).startswith("Hello from ")
    assert h.upstream("a").breaker.state is BreakerState.OPEN  # the trial failed on its own


async def test_a_half_open_trial_that_fails_like_everyone_gets_its_slot_back(make):
    h = await make(hosts=("a", "b"))
    h.upstream("a").breaker.trip()
    h.clock.advance(10)
    for host in ("a", "b"):
        h[host].chat = server_error
    await aim_at(h, "a")
    with pytest.raises(UpstreamError, match="same way"):
        await collect(h.engine, make_request("trial"))
    breaker = h.upstream("a").breaker
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.available()  # no verdict: the next trial may go
    assert h.upstream("b").breaker.consecutive_failures == 0


async def test_an_error_event_before_any_text_is_retried_and_judged_like_a_500(make):
    h = await make()

    async def error_first(request, body):
        return h["a"].stream([b'data: {"error": {"message": "StopIteration in /srv/x.py"}}\n\n'])

    h["a"].chat = error_first
    await aim_at(h, "a")
    answer = text_of(await collect(h.engine, make_request()))
    assert answer in ("Hello from b", "Hello from c")
    assert h.upstream("a").breaker.consecutive_failures == 1


async def test_a_stream_that_ends_before_its_first_token_is_retried_elsewhere(make):
    """F14: nothing reached the client, so another upstream may still answer in full."""
    h = await make()

    async def hangs_up(request, body):
        role = b'data: {"choices": [{"delta": {"role": "assistant"}, "finish_reason": null}]}\n\n'
        return h["a"].stream([role])

    h["a"].chat = hangs_up
    await aim_at(h, "a")
    assert text_of(await collect(h.engine, make_request())) in ("Hello from b", "Hello from c")
    assert h.upstream("a").breaker.consecutive_failures == 1  # a protocol failure is its own


async def test_a_4xx_on_the_retry_clears_the_first_upstream(make):
    h = await make(hosts=("a", "b"))
    h["a"].chat = server_error

    async def rejects(request, body):
        return httpx.Response(400, json={"error": {"message": "prompt is too long"}})

    h["b"].chat = rejects
    await aim_at(h, "a")
    with pytest.raises(InvalidRequest, match="prompt is too long"):
        await collect(h.engine, make_request())
    assert closed_and_clean(h)


def image_request(role, **sampling):
    image = ImagePart(Image.new("RGB", (8, 8)), "0" * 64)
    return GenerationRequest(
        request_id="img",
        messages=(
            ChatMessage(role=role, content=(image, TextPart("look"))),
            ChatMessage(role="user", content=(TextPart("what is it?"),)),
        ),
        sampling=make_sampling(**sampling),
    )


@pytest.mark.parametrize(
    ("request_", "match"),
    [
        (image_request("system"), r"'user' messages only; messages\[0\] is a 'system'"),
        (image_request("assistant"), r"messages\[0\] is a 'assistant'"),
        (make_request(max_new_tokens=5000), "^max_tokens is 5000, above this server's limit of 4096"),
        (make_request(max_new_tokens=0), "^max_tokens is 0, below the minimum of 1"),
    ],
)
async def test_what_the_gateway_can_check_is_refused_before_any_upstream(make, request_, match):
    h = await make()
    with pytest.raises(InvalidRequest, match=match) as caught:
        h.engine.submit(request_)
    if "max_tokens" in match:
        assert caught.value.param == "max_tokens"
    assert sum(h.chat_attempts().values()) == 0
    assert closed_and_clean(h)
