"""``/v1/chat/completions`` and ``/v1/models``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from glimpse.api.generation import collect, new_completion_id, start_stream, with_deadline
from glimpse.api.state import StateDep

from .adapter import completion_body, sse_stream, to_generation_request
from .schemas import ChatCompletionRequest

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["openai"])

_STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, state: StateDep
) -> dict[str, Any] | StreamingResponse:
    state.check_admitting()
    state.check_model(body.model)
    completion_id = new_completion_id()
    gen = await to_generation_request(
        body,
        request.state.request_id,
        with_deadline(state.settings.server),
        state.intake,
        state.settings.engine,
    )
    model = state.engine.model_name
    if body.stream:
        first, rest = await start_stream(state.engine, gen)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            sse_stream(completion_id, model, first, rest, include_usage),
            media_type="text/event-stream",
            headers=_STREAM_HEADERS,
        )
    result = await collect(state.engine, gen, request)
    return completion_body(completion_id, model, result)


@router.get("/models")
async def list_models(state: StateDep) -> dict[str, Any]:
    return {
        "object": "list",
        "data": [
            {
                "id": state.engine.model_name,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "glimpse",
            }
        ],
    }
