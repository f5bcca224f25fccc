"""``/v1/chat/completions`` and ``/v1/models``; OpenAI's other generation paths answer where to go."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from glimpse.api.context import ContextDep
from glimpse.api.errors import error_responses
from glimpse.api.generation import new_completion_id
from glimpse.api.security import authorize
from glimpse.api.service import CACHE_HEADER
from glimpse.api.state import StateDep
from glimpse.api.streams import ReceiveWatcher
from glimpse.engine.protocol import AdapterServing
from glimpse.errors import EndpointNotFound

from .adapter import sse_stream
from .chat import complete_chat, prepare_chat
from .schemas import ChatCompletionRequest

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(authorize)])

_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post(
    "/chat/completions",
    response_model=None,
    responses=error_responses(400, 401, 404, 408, 413, 415, 422, 429, 503, 504),
)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: StateDep, context: ContextDep
) -> JSONResponse | StreamingResponse:
    watcher = ReceiveWatcher(request.receive)
    if not body.stream:
        answer, cache = await complete_chat(body, state, context, watcher)
        return JSONResponse(answer, headers={CACHE_HEADER: cache.value})
    completion_id = new_completion_id()
    choices, images = await prepare_chat(body, state, context)
    try:
        streams = await state.service.handle_choices(
            choices, context, watcher, stream=True, on_first_event=images.free
        )
    finally:
        images.release()
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    events = sse_stream(
        completion_id,
        state.answered_by(choices[0].adapter),
        [(stream.first, stream.rest) for stream in streams],
        include_usage,
        bool(body.logprobs),
    )
    cache = context.cache or streams[0].cache
    return StreamingResponse(
        events, media_type="text/event-stream", headers={**_STREAM_HEADERS, CACHE_HEADER: cache.value}
    )


@router.api_route("/completions", methods=["GET", "POST"], include_in_schema=False)
@router.api_route("/responses", methods=["GET", "POST"], include_in_schema=False)
async def not_served(request: Request) -> None:
    """OpenAI's legacy completions and its Responses API: a 404 that says which path to use.

    LlamaIndex's ``OpenAILike`` calls ``/v1/completions`` by default; a bare "Not Found"
    does not tell its user what to change.
    """
    raise EndpointNotFound(
        f"{request.url.path} is not served here: Glimpse implements OpenAI's chat completions API; "
        "use POST /v1/chat/completions.",
    )


@router.get("/models", responses=error_responses(401, 429))
async def list_models(state: StateDep) -> dict[str, Any]:
    """The served model, then each LoRA adapter with the model it adapts as its ``parent`` (as vLLM lists
    them; an adapter's ``root`` is where it was read from)."""
    created = int(time.time())
    base = state.engine.model_name
    data: list[dict[str, Any]] = [
        {
            "id": base,
            "object": "model",
            "created": created,
            "owned_by": "glimpse",
            "root": base,
            "parent": None,
        }
    ]
    engine = state.engine
    if isinstance(engine, AdapterServing):
        data += [
            {
                "id": adapter.name,
                "object": "model",
                "created": created,
                "owned_by": "glimpse",
                "root": adapter.path,
                "parent": adapter.parent,
            }
            for adapter in engine.adapters()
        ]
    return {"object": "list", "data": data}
