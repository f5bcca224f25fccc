"""Several choices of one request (OpenAI's ``n``): each its own engine request, run side by side.

A choice is a whole request to the engine: the same prompt (the prefix cache may
find it there already), its own sequence in the batch, its own cache entry. With
a ``seed``, choice ``i`` samples with ``seed + i``, as vLLM derives its children's
seeds, so a seeded request gives the same choices again and choice 0 is the answer
of the same request with ``n`` 1. Unseeded, each choice draws from a stream of its
own. The engine never sees ``n``: an upstream server gets one request per choice.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar

from glimpse.api.streams import TokenStream
from glimpse.engine.protocol import GenerationRequest, TokenEvent

__all__ = ["choice_requests", "merged", "together"]

_T = TypeVar("_T")

#: The seeds a request may carry (``SamplingFields.seed``): a derived seed wraps around within them.
_SEED_LOW, _SEED_SPAN = -(2**63), 2**64 + 2**63


def choice_requests(gen: GenerationRequest, n: int) -> list[GenerationRequest]:
    """``n`` engine requests for ``gen``'s choices; the first is ``gen`` itself."""
    choices = [gen]
    seed = gen.sampling.seed
    for index in range(1, n):
        derived = None if seed is None else (seed + index - _SEED_LOW) % _SEED_SPAN + _SEED_LOW
        sampling = dataclasses.replace(gen.sampling, seed=derived)
        choices.append(dataclasses.replace(gen, request_id=f"{gen.request_id}-{index}", sampling=sampling))
    return choices


async def together(
    work: Sequence[Coroutine[Any, Any, _T]], discard: Callable[[_T], Awaitable[None]] | None = None
) -> list[_T]:
    """Every coroutine's result, run side by side.

    If one fails, or the caller is cancelled, the others are cancelled and the results
    already in are handed to ``discard`` (an opened stream must be closed), then the
    first failure is raised. Every task is done when this returns or raises.
    """
    if len(work) == 1:
        return [await work[0]]
    tasks = [asyncio.ensure_future(coroutine) for coroutine in work]
    complete = False
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        complete = all(not task.cancelled() and task.exception() is None for task in tasks)
    finally:
        if not complete:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            for task in tasks:
                if discard is not None and not task.cancelled() and task.exception() is None:
                    await discard(task.result())
    if not complete:
        failures = [exc for task in tasks if not task.cancelled() and (exc := task.exception()) is not None]
        raise failures[0] if failures else asyncio.CancelledError()
    return [task.result() for task in tasks]


async def merged(
    streams: Sequence[tuple[TokenEvent, TokenStream]],
) -> AsyncGenerator[tuple[int, TokenEvent], None]:
    """Each stream's events (its first one, then the rest up to its final event) as they come,
    with the stream's index; the first failure of any ends it. Closing it closes every stream."""
    queue: asyncio.Queue[tuple[int, TokenEvent | Exception | None]] = asyncio.Queue()

    async def pump(index: int, first: TokenEvent, rest: TokenStream) -> None:
        event = first
        try:
            queue.put_nowait((index, event))
            while event.finish_reason is None:
                event = await rest.__anext__()
                queue.put_nowait((index, event))
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it
            queue.put_nowait((index, exc))
        queue.put_nowait((index, None))

    pumps = [asyncio.ensure_future(pump(index, *stream)) for index, stream in enumerate(streams)]
    try:
        running = len(pumps)
        while running:
            index, item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item
    finally:
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        for _, rest in streams:
            await rest.aclose()
