import asyncio
import random
import statistics

import httpx
import pytest

from glimpse.client.bench_runner import (
    parse_chunk,
    poisson_offsets,
    run_closed_loop,
    run_open_loop,
    send_chat_request,
)
from glimpse.client.bench_stats import RequestResult

from .fakes import FakeChat, FakeClock, chunk, sse, usage


def test_parse_chunk_reads_content_reasoning_usage_and_errors():
    assert parse_chunk('{"choices":[{"delta":{"role":"assistant"}}]}').text == ""
    assert parse_chunk('{"choices":[{"delta":{"content":"hi"}}]}').text == "hi"
    assert parse_chunk('{"choices":[{"delta":{"reasoning_content":"hm"}}]}').text == "hm"
    assert parse_chunk('{"choices":[],"usage":{"completion_tokens":7}}').completion_tokens == 7
    assert parse_chunk('{"error":{"message":"engine died"}}').error == "stream_error: engine died"
    assert parse_chunk("not json").error is not None


async def test_ttft_is_taken_at_the_first_content_chunk_not_the_role_chunk():
    clock = FakeClock()
    server = FakeChat(tokens=4, clock=clock, role_delay=1.0, step=0.5)
    async with httpx.AsyncClient(transport=server.transport(), base_url="http://t") as client:
        result = await send_chat_request(client, b"{}", clock=clock)
    assert result.ok, result.error
    assert result.ttft == pytest.approx(1.5)  # role chunk at 1.0, first content at 1.5
    assert result.itls == pytest.approx((0.5, 0.5, 0.5))
    assert result.e2e == pytest.approx(3.0)
    assert result.output_tokens == 4
    assert result.tpot == pytest.approx(0.5)


async def test_usage_wins_over_chunk_count_and_chunks_are_the_fallback():
    async def stream(with_usage):
        yield sse(chunk("ab"))
        yield sse(chunk("cd"))
        if with_usage:
            yield sse(usage(4))
        yield sse("[DONE]")

    for with_usage, expected in [(True, 4), (False, 2)]:
        transport = httpx.MockTransport(lambda _, w=with_usage: httpx.Response(200, content=stream(w)))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            result = await send_chat_request(client, b"{}")
        assert result.output_tokens == expected
        assert result.tokens_from_chunks is not with_usage


async def test_http_errors_stream_errors_and_connection_errors_are_failures():
    async def broken():
        yield sse(chunk("a"))
        yield sse({"error": {"message": "boom"}})

    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    cases = [
        (
            httpx.MockTransport(lambda _: httpx.Response(429, json={"error": {"message": "slow"}})),
            429,
            "429: slow",
        ),
        (httpx.MockTransport(lambda _: httpx.Response(200, content=broken())), 200, "stream_error: boom"),
        (httpx.MockTransport(refuse), None, "ConnectError: refused"),
    ]
    for transport, status, error in cases:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            result = await send_chat_request(client, b"{}")
        assert (result.ok, result.status, result.error) == (False, status, error)


async def test_a_stream_cut_before_done_is_a_failure():
    async def cut():
        yield sse(chunk("a"))

    transport = httpx.MockTransport(lambda _: httpx.Response(200, content=cut()))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        result = await send_chat_request(client, b"{}")
    assert not result.ok
    assert "without [DONE]" in (result.error or "")


async def test_cache_header_is_reported():
    server = FakeChat(cache_header=True)
    async with httpx.AsyncClient(transport=server.transport(), base_url="http://t") as client:
        assert (await send_chat_request(client, b"{}")).cache_hit


def test_poisson_schedule_is_seeded_and_has_the_right_rate():
    a = poisson_offsets(10.0, num_requests=2000, duration_s=None, rng=random.Random(7))
    b = poisson_offsets(10.0, num_requests=2000, duration_s=None, rng=random.Random(7))
    assert a == b
    assert len(a) == 2000
    assert a[0] == 0.0
    gaps = [y - x for x, y in zip(a, a[1:], strict=False)]
    assert all(g >= 0 for g in gaps)
    assert statistics.mean(gaps) == pytest.approx(0.1, rel=0.1)
    assert statistics.stdev(gaps) == pytest.approx(0.1, rel=0.15)  # exponential: sd == mean
    assert a != poisson_offsets(10.0, num_requests=2000, duration_s=None, rng=random.Random(8))


def test_poisson_schedule_by_duration_stays_inside_it():
    offsets = poisson_offsets(5.0, num_requests=None, duration_s=100.0, rng=random.Random(1))
    assert max(offsets) < 100.0
    assert 400 < len(offsets) < 600
    with pytest.raises(ValueError, match="positive"):
        poisson_offsets(0, num_requests=1, duration_s=None, rng=random.Random())


def _result(index):
    return RequestResult(ok=True, start=float(index), e2e=0.01, status=200, output_tokens=1)


async def test_closed_loop_keeps_exactly_concurrency_in_flight():
    in_flight = peak = 0
    sent = []

    async def send(index):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        sent.append(index)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return _result(index)

    seen = []
    results = await run_closed_loop(send, 4, num_requests=25, duration_s=None, on_result=seen.append)
    assert sorted(sent) == list(range(25))
    assert peak == 4
    assert len(results) == len(seen) == 25


async def test_closed_loop_by_duration_starts_nothing_after_the_deadline():
    clock = FakeClock()

    async def send(index):
        clock.now += 1.0
        await asyncio.sleep(0)
        return _result(index)

    results = await run_closed_loop(
        send, 2, num_requests=None, duration_s=5.0, on_result=lambda _: None, clock=clock
    )
    assert all(r.start < 5 for r in results)  # start is the index here: nothing past the budget
    assert 4 <= len(results) <= 6


async def test_open_loop_starts_requests_on_schedule_without_waiting_for_earlier_ones():
    clock = FakeClock()
    sleeps = []
    started = []

    async def fake_sleep(seconds):
        sleeps.append(seconds)
        await asyncio.sleep(0)  # tasks created before the sleep start during it, as with a real one
        clock.now += seconds

    release = asyncio.Event()

    async def send(index):
        started.append((index, clock.now))
        if len(started) == 4:
            release.set()
        await release.wait()  # nothing finishes until everything has started
        return _result(index)

    results = await run_open_loop(
        send,
        [0.0, 0.5, 0.75, 2.0],
        max_concurrency=None,
        on_result=lambda _: None,
        clock=clock,
        sleep=fake_sleep,
    )
    assert sleeps == pytest.approx([0.5, 0.25, 1.25])
    assert [t for _, t in started] == pytest.approx([0.0, 0.5, 0.75, 2.0])
    assert len(results) == 4


async def test_open_loop_max_concurrency_caps_in_flight():
    in_flight = peak = 0

    async def send(index):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        return _result(index)

    results = await run_open_loop(send, [0.0] * 20, max_concurrency=3, on_result=lambda _: None)
    assert peak == 3
    assert len(results) == 20
