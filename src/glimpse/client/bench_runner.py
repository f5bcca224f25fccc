"""Load shapes and the timed streaming request at the heart of ``glimpse bench``.

The drivers take a ``send(index)`` coroutine and a clock, not an HTTP client, so
closed-loop and Poisson scheduling are tested without a server or real sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from glimpse import openai_wire
from glimpse.client._http import error_message
from glimpse.client.bench_stats import RequestResult
from glimpse.sse import DONE, aiter_sse_data

__all__ = [
    "OnResult",
    "Send",
    "Chunk",
    "parse_chunk",
    "poisson_offsets",
    "run_closed_loop",
    "run_open_loop",
    "send_chat_request",
]

Clock = Callable[[], float]
Send = Callable[[int], Awaitable[RequestResult]]
OnResult = Callable[[RequestResult], None]
CHAT_PATH = "/v1/chat/completions"


@dataclass(slots=True, frozen=True)
class Chunk:
    text: str = ""
    completion_tokens: int | None = None
    error: str | None = None


def parse_chunk(data: str) -> Chunk:
    """Reasoning tokens count as content: a thinking model's first token is still its first."""
    try:
        chunk = openai_wire.parse_chunk(data)
    except openai_wire.MalformedChunk:
        return Chunk(error=f"bad_chunk: {data[:80]}")
    if chunk.error is not None:
        return Chunk(error=f"stream_error: {chunk.error}")
    return Chunk(
        text=chunk.text + chunk.reasoning,
        completion_tokens=None if chunk.usage is None else chunk.usage[1],
    )


async def _consume(response: httpx.Response, start: float, clock: Clock) -> RequestResult:
    ttft: float | None = None
    last = start
    itls: list[float] = []
    chunks = 0
    usage_tokens: int | None = None
    error: str | None = "stream_error: ended without [DONE]"
    async for data in aiter_sse_data(response.aiter_lines()):
        if data == DONE:
            error = None
            break
        chunk = parse_chunk(data)
        now = clock()
        if chunk.error is not None:
            error = chunk.error
            break
        if chunk.text:
            if ttft is None:
                ttft = now - start
            else:
                itls.append(now - last)
            last = now
            chunks += 1
        if chunk.completion_tokens is not None:
            usage_tokens = chunk.completion_tokens
    return RequestResult(
        ok=error is None,
        start=start,
        e2e=clock() - start,
        status=response.status_code,
        error=error,
        ttft=ttft,
        itls=tuple(itls),
        output_tokens=usage_tokens if usage_tokens is not None else chunks,
        cache_hit=response.headers.get("x-glimpse-cache", "").lower() == "hit",
        tokens_from_chunks=usage_tokens is None,
    )


async def send_chat_request(
    client: httpx.AsyncClient, body: bytes, *, clock: Clock = time.perf_counter
) -> RequestResult:
    """One streamed chat completion, timed from just before the request is sent."""
    start = clock()
    try:
        async with client.stream(
            "POST", CHAT_PATH, content=body, headers={"Content-Type": "application/json"}
        ) as response:
            if response.status_code != 200:
                await response.aread()
                return RequestResult(
                    ok=False,
                    start=start,
                    e2e=clock() - start,
                    status=response.status_code,
                    error=error_message(response),
                )
            return await _consume(response, start, clock)
    except httpx.HTTPError as exc:
        return RequestResult(ok=False, start=start, e2e=clock() - start, error=f"{type(exc).__name__}: {exc}")


async def run_closed_loop(
    send: Send,
    concurrency: int,
    *,
    num_requests: int | None,
    duration_s: float | None,
    on_result: OnResult,
    clock: Clock = time.perf_counter,
) -> list[RequestResult]:
    """``concurrency`` workers, each sending its next request as soon as the last ends.

    With a duration no request starts after the deadline; those in flight finish
    and are counted, as vLLM does.
    """
    results: list[RequestResult] = []
    counter = itertools.count()
    deadline = None if duration_s is None else clock() + duration_s

    async def worker() -> None:
        while True:
            index = next(counter)
            if num_requests is not None and index >= num_requests:
                return
            if deadline is not None and clock() >= deadline:
                return
            result = await send(index)
            results.append(result)
            on_result(result)

    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    return results


def poisson_offsets(
    rate: float, *, num_requests: int | None, duration_s: float | None, rng: random.Random
) -> list[float]:
    """Arrival times (s from the start) of a Poisson process; the first arrives at 0."""
    if rate <= 0:
        raise ValueError("rate must be positive")
    if num_requests is None and duration_s is None:
        raise ValueError("need num_requests or duration_s")
    offsets: list[float] = []
    t = 0.0
    while num_requests is None or len(offsets) < num_requests:
        if duration_s is not None and t >= duration_s:
            break
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


async def run_open_loop(
    send: Send,
    offsets: list[float],
    *,
    max_concurrency: int | None,
    on_result: OnResult,
    clock: Clock = time.perf_counter,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> list[RequestResult]:
    """Start request i at ``offsets[i]`` whether or not earlier ones have finished.

    ``max_concurrency`` caps requests in flight; time spent waiting for a slot is
    not part of a request's latency, as in ``vllm bench serve --max-concurrency``.
    """
    results: list[RequestResult] = []
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    async def one(index: int) -> None:
        if slots is None:
            result = await send(index)
        else:
            async with slots:
                result = await send(index)
        results.append(result)
        on_result(result)

    start = clock()
    async with asyncio.TaskGroup() as group:
        for index, offset in enumerate(offsets):
            delay = start + offset - clock()
            if delay > 0:
                await sleep(delay)
            group.create_task(one(index))
    return results
