"""A chat completion from a validated request: the one pipeline live requests and batch lines share.

The route streams or answers it whole; a Batch API line (``api.batch.runner``) is a
non-streamed chat completion run through ``complete_chat`` exactly as a live request
is: model check, adapter (images fetched, sized and decoded), ``GenerationService``
(guard, cache, single-flight, engine, quota), the same response body.
"""

from __future__ import annotations

from typing import Any

from glimpse.api.context import RequestContext
from glimpse.api.generation import image_size_check, new_completion_id, with_deadline
from glimpse.api.service import CacheStatus
from glimpse.api.state import AppState
from glimpse.api.streams import DisconnectWatcher
from glimpse.engine.protocol import GenerationRequest
from glimpse.media import DecodedBatch

from .adapter import completion_body, to_generation_request
from .schemas import ChatCompletionRequest

__all__ = ["complete_chat", "prepare_chat"]


async def prepare_chat(
    body: ChatCompletionRequest, state: AppState, context: RequestContext
) -> tuple[list[GenerationRequest], DecodedBatch]:
    """The engine requests, one per choice, and their decoded images (the caller frees or releases them)."""
    adapter = state.check_model(body.model)
    return await to_generation_request(
        body,
        context.engine_request_id(),
        with_deadline(state.settings.server),
        state.intake,
        state.settings.engine,
        image_size_check(state.engine),
        adapter,
    )


async def complete_chat(
    body: ChatCompletionRequest, state: AppState, context: RequestContext, watcher: DisconnectWatcher
) -> tuple[dict[str, Any], CacheStatus]:
    """A whole ``chat.completion`` body, and where its answer came from."""
    completion_id = new_completion_id()
    choices, images = await prepare_chat(body, state, context)
    try:
        results = await state.service.handle_choices(
            choices, context, watcher, stream=False, on_first_event=images.free
        )
    finally:
        images.release()
    answer = completion_body(
        completion_id, state.answered_by(choices[0].adapter), results, bool(body.logprobs)
    )
    return answer, context.cache or results[0].cache
