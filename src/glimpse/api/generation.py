"""What every API surface shares: sampling limits, images, and running a request.

The OpenAI and ``/infer`` adapters only translate their wire shapes; this module
turns the result into engine calls, watches for the client going away (and then
cancels the engine request), and collects or streams the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.requests import Request

from glimpse.config import EngineSettings, ServerSettings
from glimpse.engine.protocol import (
    Engine,
    FinishReason,
    GenerationRequest,
    ImagePart,
    SamplingParams,
    TokenEvent,
)
from glimpse.errors import EngineRequestError, InvalidRequest
from glimpse.media import DecodedImage

__all__ = [
    "Completion",
    "collect",
    "image_part",
    "new_completion_id",
    "sampling_params",
    "start_stream",
    "with_deadline",
]


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def image_part(decoded: DecodedImage) -> ImagePart:
    return ImagePart(decoded.image, decoded.sha256)


def sampling_params(
    settings: EngineSettings,
    *,
    max_tokens: int | None,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
    stop: str | list[str] | None = None,
    ignore_eos: bool = False,
) -> SamplingParams:
    max_new = settings.default_max_new_tokens if max_tokens is None else max_tokens
    if max_new > settings.max_new_tokens_limit:
        raise InvalidRequest(
            f"max_tokens is {max_new}, above this server's limit of {settings.max_new_tokens_limit}.",
            param="max_tokens",
        )
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    return SamplingParams(
        max_new_tokens=max_new,
        temperature=0.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        seed=seed,
        stop=stops,
        ignore_eos=ignore_eos,
    )


def with_deadline(server: ServerSettings) -> float:
    return time.monotonic() + server.request_timeout_s


@dataclass(slots=True)
class Completion:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


async def _watch_disconnect(request: Request) -> None:
    """Return once the client has gone away (after the body was read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def collect(engine: Engine, gen: GenerationRequest, http_request: Request) -> Completion:
    """Run a request to its end; if the client disconnects first, cancel it."""

    async def run() -> Completion:
        parts: list[str] = []
        last: TokenEvent | None = None
        stream = engine.submit(gen)
        try:
            async for event in stream:
                parts.append(event.text)
                last = event
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
        assert last is not None
        assert last.finish_reason is not None
        return Completion("".join(parts), last.finish_reason, last.prompt_tokens, last.completion_tokens)

    work = asyncio.create_task(run())
    watcher = asyncio.create_task(_watch_disconnect(http_request))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return work.result()
        work.cancel()
        await engine.cancel(gen.request_id)
        with contextlib.suppress(asyncio.CancelledError):
            await work
        raise asyncio.CancelledError("client disconnected")
    finally:
        for task in (work, watcher):
            if not task.done():
                task.cancel()
        if not work.done():
            await engine.cancel(gen.request_id)


async def start_stream(
    engine: Engine, gen: GenerationRequest
) -> tuple[TokenEvent, AsyncIterator[TokenEvent]]:
    """Admit the request and wait for its first event, so errors still get a status code.

    Returns the first event and the rest of the stream; the caller must close the
    stream (``aclose``) when it stops early, which cancels the request.
    """
    stream = engine.submit(gen)
    try:
        first = await stream.__anext__()
    except StopAsyncIteration:  # an engine must always end with a finish event
        raise EngineRequestError("The engine produced no output.") from None
    except BaseException:
        await stream.aclose()  # type: ignore[attr-defined]
        raise
    return first, stream
