"""Relaying one upstream answer stream as ``TokenEvent``s, within the request's bounds.

An upstream that ignored ``max_tokens`` had 46 MB relayed for ``max_tokens=16``.
Here the answer is cut at ``max_tokens`` answer chunks (each carries one token at
least, reasoning included) with ``finish_reason`` length, and closing the response
tells the upstream to stop. The bytes read are bounded too (``_reader``): one event
line, and the whole answer by ``max_tokens``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx

from glimpse.config import UpstreamSettings
from glimpse.engine.protocol import FinishReason, GenerationRequest, TokenEvent, ToolCallDelta
from glimpse.engine.upstream._failures import Progress, Reported
from glimpse.engine.upstream._reader import bounded_lines
from glimpse.engine.upstream.wire import finish_reason, parse_chunk, token_logprobs
from glimpse.errors import GlimpseError, UpstreamError
from glimpse.sse import DONE, aiter_sse_data

__all__ = ["relay"]

logger = logging.getLogger(__name__)

#: Seconds to wait for the end of the body after ``[DONE]``.
_DRAIN_S = 1.0


async def _drain(events: AsyncIterator[str]) -> None:
    """Read to the end of the body so the connection can be reused, without waiting long
    on a server that keeps it open after ``[DONE]``."""
    with contextlib.suppress(TimeoutError, httpx.HTTPError, GlimpseError):
        async with asyncio.timeout(_DRAIN_S):
            async for _ in events:
                pass


async def relay(
    response: httpx.Response,
    request: GenerationRequest,
    queue: asyncio.Queue[TokenEvent | None],
    progress: Progress,
    options: UpstreamSettings,
) -> None:
    """Put the answer's events on ``queue``, the last with its finish reason and usage."""
    limit = request.sampling.max_new_tokens
    lines = bounded_lines(
        response,
        max_line=options.max_event_bytes,
        max_total=options.max_event_bytes + options.response_bytes_per_token * limit,
    )
    finish: FinishReason | None = None
    usage: tuple[int, int] | None = None
    async with contextlib.aclosing(lines), contextlib.aclosing(aiter_sse_data(lines)) as events:
        async for data in events:
            if data.strip() == DONE:
                # Drained, and the response closed, before the last event goes out: a
                # consumer that has its answer cancels the attempt, and a cancel landing
                # while the response closes leaked the pooled connection (measured: a pool
                # of 4 exhausted after 4 answers; tests/.../test_engine_keepalive.py).
                await _drain(events)
                break
            chunk = parse_chunk(data)
            if chunk.error is not None:
                raise Reported(UpstreamError("the upstream failed during the answer"), chunk.error)
            if chunk.text or chunk.reasoning or chunk.logprobs or chunk.tool_calls:
                if progress.tokens >= limit:
                    logger.warning(
                        "request %s: the upstream sent more than max_tokens=%d tokens; answer cut",
                        request.request_id,
                        limit,
                    )
                    finish, usage = FinishReason.LENGTH, (usage[0] if usage else 0, limit)
                    break
                progress.tokens += 1
                logprobs = token_logprobs(chunk.logprobs)
                calls = tuple(ToolCallDelta(*call) for call in chunk.tool_calls)
                queue.put_nowait(
                    TokenEvent(chunk.text, reasoning=chunk.reasoning, logprobs=logprobs, tool_calls=calls)
                )
                progress.output()
            finish = finish_reason(chunk.finish_reason) or finish
            usage = chunk.usage or usage
    if finish is None:
        raise UpstreamError("the upstream stream ended before the answer was complete")
    prompt_tokens, completion_tokens = usage or (0, progress.tokens)
    progress.output()
    queue.put_nowait(
        TokenEvent("", finish_reason=finish, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    )
