import asyncio
import json
import time

import httpx
import pytest
from PIL import Image

from glimpse.config import EngineSettings, UpstreamSettings
from glimpse.engine.protocol import ChatMessage, Engine, FinishReason, GenerationRequest, ImagePart, TextPart
from glimpse.engine.upstream import BreakerState, UpstreamEngine
from glimpse.errors import (
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    NotReady,
    Overloaded,
    RateLimited,
    UpstreamError,
    UpstreamTimeout,
)

from ._fakes import (
    DONE,
    HOSTS,
    Cluster,
    FakeClock,
    Harness,
    RecordingMetrics,
    answer,
    chunk,
    collect,
    make_request,
    make_sampling,
    text_of,
    wait_until,
)


@pytest.fixture
async def h():
    harness = Harness()
    await harness.engine.start()
    yield harness
    await harness.engine.stop()
    await harness.client.aclose()


@pytest.fixture
async def h1():
    harness = Harness(hosts=("a",))
    await harness.engine.start()
    yield harness
    await harness.engine.stop()
    await harness.client.aclose()


async def test_is_an_engine_and_streams_an_answer(h):
    assert isinstance(h.engine, Engine)
    assert h.engine.model_name == "GLM-Test"
    events = await collect(h.engine, make_request("r1", max_new_tokens=5, seed=1))
    assert text_of(events) == "Hello from a"
    assert [e.finish_reason for e in events] == [None, None, None, FinishReason.STOP]
    assert (events[-1].prompt_tokens, events[-1].completion_tokens) == (11, 3)
    body = h["a"].chat_bodies[0]
    assert body["model"] == "served/GLM-Test"  # mapped from the upstream's /v1/models
    assert (body["max_tokens"], body["seed"], body["stream"]) == (5, 1, True)
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "Describe it."}]
    headers = h["a"].chat_headers[0]
    assert headers["authorization"] == "Bearer secret-key"
    assert headers["x-request-id"] == "r1"
    assert h.metrics.requests == [("http://a:8000", "2xx")]
    assert h.metrics.in_flight["http://a:8000"] == 0


async def test_images_go_as_data_urls(h):
    image = Image.new("RGB", (8, 8), (255, 0, 0))
    request = GenerationRequest(
        request_id="img",
        messages=(ChatMessage(role="user", content=(ImagePart(image, "f" * 64), TextPart("What colour?"))),),
        sampling=make_sampling(),
    )
    await collect(h.engine, request)
    content = h["a"].chat_bodies[0]["messages"][0]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert content[1] == {"type": "text", "text": "What colour?"}


async def test_without_usage_completion_tokens_are_counted(h):
    async def chat(request, body):
        return h["a"].stream([chunk("a"), chunk("b"), chunk("c", finish="length"), DONE])

    h["a"].chat = chat
    events = await collect(h.engine, make_request())
    assert text_of(events) == "abc"
    assert events[-1].finish_reason is FinishReason.LENGTH
    assert (events[-1].prompt_tokens, events[-1].completion_tokens) == (0, 3)


async def test_least_outstanding_balancing_with_held_streams(h):
    hold = asyncio.Event()
    for host in HOSTS:
        up = h[host]

        async def chat(request, body, up=up):
            return up.stream(answer("x"), hold=hold, after=[])

        up.chat = chat
    # Each stream sends its whole answer but the body stays open until `hold` is set.
    tasks = [asyncio.create_task(collect(h.engine, make_request(f"r{i}"))) for i in range(9)]
    await wait_until(lambda: sum(h.chat_attempts().values()) == 9)
    assert h.chat_attempts() == {"a": 3, "b": 3, "c": 3}
    assert h.engine.health().running == 9
    hold.set()
    results = await asyncio.gather(*tasks)
    assert all(text_of(events) == "x" for events in results)
    assert h.engine.health().running == 0


async def test_failover_on_connection_error_before_first_byte(h):
    h["a"].down = True  # went down after the start-up health check
    events = await collect(h.engine, make_request())
    assert text_of(events) == "Hello from b"
    assert h.chat_attempts() == {"a": 1, "b": 1, "c": 0}
    assert h.metrics.requests == [("http://a:8000", "connect_error"), ("http://b:8000", "2xx")]
    assert h.upstream("a").breaker.consecutive_failures == 1


async def test_failover_on_503_and_on_500(h):
    async def unavailable(request, body):
        return httpx.Response(503, json={"error": {"message": "loading"}})

    h["a"].chat = unavailable
    assert text_of(await collect(h.engine, make_request("r1"))) == "Hello from b"
    assert h.upstream("a").breaker.consecutive_failures == 1  # busy is its own state

    async def broken(request, body):
        return httpx.Response(500, json={"error": {"message": "boom"}})

    h["a"].chat = h["a"].default_chat
    h["c"].chat = broken  # the rotation starts at c now
    assert text_of(await collect(h.engine, make_request("r2"))) == "Hello from a"
    assert h.chat_attempts() == {"a": 2, "b": 1, "c": 1}
    # `a` served what `c` failed: c's 500 was its own fault.
    assert h.upstream("c").breaker.consecutive_failures == 1
    assert h.upstream("c").last_error == "upstream failed (500)"


async def test_no_retry_after_the_first_byte(h):
    async def dies(request, body):
        return h["a"].stream([chunk("partial")], after=[httpx.ReadError("connection reset")])

    h["a"].chat = dies
    stream = h.engine.submit(make_request())
    assert (await anext(stream)).text == "partial"
    with pytest.raises(UpstreamError, match="broke") as info:
        await anext(stream)
    assert isinstance(info.value.__cause__, httpx.ReadError)
    assert h.chat_attempts() == {"a": 1, "b": 0, "c": 0}
    assert h.metrics.requests == [("http://a:8000", "stream_error")]


async def test_error_event_mid_stream_is_not_retried(h):
    async def error_event(request, body):
        return h["a"].stream([chunk("x"), b'data: {"error": {"message": "engine crashed"}}\n\n', DONE])

    h["a"].chat = error_event
    with pytest.raises(UpstreamError, match="failed during the answer") as info:
        await collect(h.engine, make_request())
    assert "engine crashed" not in info.value.message  # the upstream's words are logged, not relayed
    assert h.chat_attempts() == {"a": 1, "b": 0, "c": 0}
    # After text went out, whose fault it was cannot be told: no verdict either way.
    assert h.upstream("a").breaker.consecutive_failures == 0


async def test_connection_break_before_any_text_is_retried(h):
    async def dies_early(request, body):
        role = b'data: {"choices": [{"delta": {"role": "assistant"}}]}\n\n'
        return h["a"].stream([role], after=[httpx.RemoteProtocolError("peer closed")])

    h["a"].chat = dies_early
    assert text_of(await collect(h.engine, make_request())) == "Hello from b"


async def test_stream_without_finish_is_an_error(h):
    async def truncated(request, body):
        return h["a"].stream([chunk("x")])

    h["a"].chat = truncated
    with pytest.raises(UpstreamError, match="ended before"):
        await collect(h.engine, make_request())


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "match"),
    [
        (400, {"error": {"message": "prompt is too long"}}, {}, InvalidRequest, "prompt is too long"),
        (
            404,
            {"object": "error", "message": "The model `GLM-Test` does not exist."},
            {},
            ModelNotFound,
            "model",
        ),
        (429, {"error": {"message": "slow down"}}, {"retry-after": "4"}, RateLimited, "slow down"),
    ],
)
async def test_4xx_is_mapped_and_never_retried(h, status, body, headers, kind, match):
    async def reject(request, _body):
        return httpx.Response(status, json=body, headers=headers)

    for host in HOSTS:
        h[host].chat = reject
    with pytest.raises(kind, match=match) as info:
        await collect(h.engine, make_request())
    assert sum(h.chat_attempts().values()) == 1
    if status == 429:
        assert info.value.retry_after == 4
    assert all(u.breaker.consecutive_failures == 0 for u in h.engine.upstreams)


async def test_all_upstreams_failing(h):
    for host in HOSTS:
        h[host].down = True
    with pytest.raises(UpstreamError, match="3 upstream") as info:
        await collect(h.engine, make_request())
    assert info.value.status_code == 502
    assert isinstance(info.value.__cause__, UpstreamError)


async def test_all_upstreams_busy_is_overloaded(h):
    async def busy(request, body):
        return httpx.Response(503, headers={"retry-after": "2"})

    for host in HOSTS:
        h[host].chat = busy
    with pytest.raises(Overloaded) as info:
        await collect(h.engine, make_request())
    assert info.value.retry_after == 2


async def test_read_timeout_after_the_first_token_is_upstream_timeout_without_retry(h):
    async def slow(request, body):
        return h["a"].stream([chunk("x")], after=[httpx.ReadTimeout("read timed out")])

    h["a"].chat = slow
    with pytest.raises(UpstreamTimeout):
        await collect(h.engine, make_request())
    assert h.chat_attempts() == {"a": 1, "b": 0, "c": 0}
    assert h.upstream("a").breaker.consecutive_failures == 1


async def test_read_timeout_before_the_first_token_is_retried_once(h):
    async def silent(request, body):
        return h["a"].stream([], after=[httpx.ReadTimeout("read timed out")])

    h["a"].chat = silent
    assert text_of(await collect(h.engine, make_request())) == "Hello from b"
    assert h.upstream("a").breaker.consecutive_failures == 1  # b answered: a's silence was a's


async def test_circuit_opens_skips_upstream_then_half_open_trial_closes_it(h):
    h["a"].down = True
    for i in range(6):  # threshold 2: `a` fails twice, then is skipped
        assert text_of(await collect(h.engine, make_request(f"r{i}"))) != ""
    assert h.chat_attempts()["a"] == 2
    assert h.upstream("a").breaker.state is BreakerState.OPEN
    assert h.metrics.healthy["http://a:8000"] is False
    assert "http://a:8000 open" in h.engine.health().detail
    assert h.engine.health().ready

    h["a"].down = False
    h.clock.advance(10)
    assert h.upstream("a").breaker.state is BreakerState.HALF_OPEN
    # Every upstream idle: the least-loaded pick is the rotation's, so aim the trial at `a`.
    for host in ("b", "c"):
        h.upstream(host).in_flight += 1
    assert text_of(await collect(h.engine, make_request("trial"))) == "Hello from a"
    for host in ("b", "c"):
        h.upstream(host).in_flight -= 1
    assert h.upstream("a").breaker.state is BreakerState.CLOSED
    assert h.metrics.healthy["http://a:8000"] is True


async def test_all_circuits_open_rejects_at_once(h1):
    h1["a"].down = True
    for i in range(2):
        with pytest.raises(UpstreamError):
            await collect(h1.engine, make_request(f"r{i}"))
    attempts = h1.chat_attempts()["a"]
    with pytest.raises(Overloaded) as info:
        h1.engine.submit(make_request("r3"))
    assert info.value.retry_after == 10
    assert h1.chat_attempts()["a"] == attempts
    assert not h1.engine.health().ready


async def test_half_open_lets_only_one_trial_through(h1):
    h1["a"].down = True
    for i in range(2):
        with pytest.raises(UpstreamError):
            await collect(h1.engine, make_request(f"r{i}"))
    h1["a"].down = False
    h1.clock.advance(10)
    hold = asyncio.Event()

    async def held(request, body):
        return h1["a"].stream(answer("ok"), hold=hold)

    h1["a"].chat = held
    trial = asyncio.create_task(collect(h1.engine, make_request("trial")))
    await wait_until(lambda: h1.chat_attempts()["a"] == 3)
    with pytest.raises(Overloaded):
        h1.engine.submit(make_request("second"))
    hold.set()
    assert text_of(await trial) == "ok"
    assert h1.engine.health().ready


async def test_closing_the_iterator_closes_the_upstream_stream(h):
    async def endless(request, body):
        return h["a"].stream([chunk("first")], hold=asyncio.Event())

    h["a"].chat = endless
    stream = h.engine.submit(make_request())
    first = await anext(stream)
    assert first.text == "first"
    await stream.aclose()
    assert h["a"].streams[-1].closed
    assert h.upstream("a").in_flight == 0
    assert h.metrics.requests == [("http://a:8000", "cancelled")]
    assert h.upstream("a").breaker.consecutive_failures == 0


async def test_deadline_closes_the_stream(h):
    async def endless(request, body):
        return h["a"].stream([chunk("first")], hold=asyncio.Event())

    h["a"].chat = endless
    request = GenerationRequest(
        request_id="late",
        messages=make_request().messages,
        sampling=make_sampling(),
        deadline=time.monotonic() + 0.05,
    )
    with pytest.raises(DeadlineExceeded):
        await collect(h.engine, request)
    assert h["a"].streams[-1].closed


async def test_model_name_mapping_falls_back_to_ours():
    harness = Harness(hosts=("a",))
    harness["a"].models = ("one", "two")
    await harness.engine.start()
    try:
        await collect(harness.engine, make_request())
        assert harness["a"].chat_bodies[0]["model"] == "GLM-Test"
    finally:
        await harness.engine.stop()
        await harness.client.aclose()


async def test_health_and_lifecycle():
    harness = Harness(hosts=("a", "b"))
    harness["b"].down = True
    with pytest.raises(NotReady):
        harness.engine.submit(make_request())
    assert not harness.engine.health().ready
    await harness.engine.start()
    health = harness.engine.health()
    assert health.ready
    assert health.detail.startswith("1/2 upstreams healthy")
    assert "http://a:8000 closed" in health.detail
    assert "http://b:8000 open" in health.detail
    assert "ConnectError" in health.detail
    await harness.engine.stop()
    assert not harness.engine.health().ready
    assert not harness.client.is_closed  # a client we were given is the caller's to close
    await harness.client.aclose()


async def test_stop_cancels_streams_in_flight(h):
    async def endless(request, body):
        return h["a"].stream([chunk("first")], hold=asyncio.Event())

    h["a"].chat = endless
    events = []

    async def consume():
        async for event in h.engine.submit(make_request()):
            events.append(event)

    task = asyncio.create_task(consume())
    await wait_until(lambda: len(events) == 1)
    await h.engine.stop()
    await asyncio.wait_for(task, 1)
    assert events[-1].finish_reason is FinishReason.CANCELLED
    assert h["a"].streams[-1].closed


async def test_owns_and_closes_its_client_when_none_is_given():
    settings = EngineSettings(kind="upstream")
    engine = UpstreamEngine(settings, UpstreamSettings(urls=("http://127.0.0.1:9",), health_timeout_s=0.5))
    await engine.start()  # nothing listens on port 9: started, not ready
    assert not engine.health().ready
    await engine.stop()


async def test_a_cancelled_request_from_before_the_trip_keeps_the_half_open_trial_single(h1):
    """Only the trial's own end frees the trial slot; an old stream's cancellation must not."""
    old_hold = asyncio.Event()

    async def slow(request, body):
        return h1["a"].stream(answer("old"), hold=old_hold)

    h1["a"].chat = slow
    old = asyncio.create_task(collect(h1.engine, make_request("old")))  # sent while closed
    await wait_until(lambda: h1.chat_attempts()["a"] == 1)
    h1.upstream("a").breaker.trip()
    h1.clock.advance(10)
    trial_hold = asyncio.Event()

    async def held(request, body):
        return h1["a"].stream(answer("trial"), hold=trial_hold)

    h1["a"].chat = held
    trial = asyncio.create_task(collect(h1.engine, make_request("trial")))
    await wait_until(lambda: h1.chat_attempts()["a"] == 2)
    old.cancel()
    with pytest.raises(asyncio.CancelledError):
        await old
    with pytest.raises(Overloaded):  # the trial is still out: no second one
        h1.engine.submit(make_request("second"))
    trial_hold.set()
    assert text_of(await trial) == "trial"
    assert h1.upstream("a").breaker.state is BreakerState.CLOSED


async def test_a_full_local_connection_pool_is_not_blamed_on_the_upstream(h1):
    async def pool_full(request, body):
        raise httpx.PoolTimeout("no connection available in the pool", request=request)

    h1["a"].chat = pool_full
    for i in range(3):  # failure threshold 2: this would open the circuit if it counted
        with pytest.raises(Overloaded) as info:
            await collect(h1.engine, make_request(f"r{i}"))
        assert info.value.retry_after == 1
    assert h1.chat_attempts()["a"] == 3  # not retried (another upstream would share the pool)
    assert h1.upstream("a").breaker.state is BreakerState.CLOSED
    assert h1.engine.health().ready


async def test_a_stream_event_nested_too_deep_is_an_upstream_error_with_a_verdict(h1):
    deep = b"data: " + b"[" * 100_000 + b"]" * 100_000 + b"\n\n"

    async def nested(request, body):
        return h1["a"].stream([deep])

    h1["a"].chat = nested
    for i in range(2):
        with pytest.raises(UpstreamError, match="malformed stream event"):
            await collect(h1.engine, make_request(f"r{i}"))
    assert h1.upstream("a").breaker.state is BreakerState.OPEN  # counted as the upstream's failures


async def test_upstream_credentials_stay_out_of_health_details_and_metrics():
    cluster = Cluster("a")
    metrics = RecordingMetrics()
    settings = EngineSettings(kind="upstream", model="GLM-Test")
    async with httpx.AsyncClient(transport=cluster.transport) as client:
        engine = UpstreamEngine(
            settings,
            UpstreamSettings(urls=("http://user:s3cret@a:8000",), health_interval_s=3600),
            http_client=client,
            metrics_hook=metrics,
            clock=FakeClock(),
        )
        await engine.start()
        try:
            assert text_of(await collect(engine, make_request("r"))) == "Hello from a"
            detail = engine.health().detail
        finally:
            await engine.stop()
    assert "s3cret" not in detail
    assert "s3cret" not in repr(metrics.__dict__)
    assert "http://a:8000" in detail


async def test_logprobs_are_relayed_with_their_tokens_even_without_text(h):
    def with_logprobs(text: str, token: str, logprob: float) -> bytes:
        entry = {"token": token, "logprob": logprob, "bytes": list(token.encode()), "top_logprobs": []}
        choice = {"index": 0, "delta": {"content": text}, "logprobs": {"content": [entry]}}
        return b"data: " + json.dumps({"choices": [choice]}).encode() + b"\n\n"

    async def chat(request, body):
        parts = [with_logprobs("Hi", "Hi", -0.5), with_logprobs("", "<", -1.5), chunk(finish="stop"), DONE]
        return h["a"].stream(parts)

    h["a"].chat = chat
    events = await collect(h.engine, make_request(logprobs=0))
    assert h["a"].chat_bodies[0]["logprobs"] is True
    assert [(e.text, [(t.token, t.logprob) for t in e.logprobs]) for e in events[:-1]] == [
        ("Hi", [("Hi", -0.5)]),
        ("", [("<", -1.5)]),
    ]
    assert events[-1].finish_reason is FinishReason.STOP
