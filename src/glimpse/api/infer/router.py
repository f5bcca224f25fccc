"""``POST /infer`` (base64 JSON) and ``POST /v1/analyze`` (multipart upload)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile

from glimpse.api.context import ContextDep, RequestContext
from glimpse.api.errors import error_responses
from glimpse.api.generation import SamplingFields, image_size_check, sampling_params, with_deadline
from glimpse.api.security import authorize
from glimpse.api.service import CACHE_HEADER
from glimpse.api.state import AppState, StateDep
from glimpse.api.streams import ReceiveWatcher
from glimpse.errors import ImageTooLarge

from .adapter import to_generation_request
from .schemas import InferRequest, InferResponse

__all__ = ["router"]

router = APIRouter(tags=["simple"], dependencies=[Depends(authorize)])


async def _answer(
    state: AppState,
    context: RequestContext,
    request: Request,
    response: Response,
    image: bytes,
    question: str,
    max_new_tokens: int | None,
    fields: SamplingFields | None = None,
    model: str | None = None,
) -> InferResponse:
    """Decode (under the pixel budget), screen and answer; the image is freed once the engine has it."""
    adapter = state.check_model(model)
    deadline = with_deadline(state.settings.server)
    sampling = sampling_params(state.settings.engine, max_tokens=max_new_tokens, fields=fields)
    size_check = image_size_check(state.engine)
    budget = sampling.max_new_tokens
    images = await state.intake.decode_all(
        [image], deadline, None if size_check is None else lambda headers: size_check(headers, budget)
    )
    try:
        gen = to_generation_request(
            images.images[0],
            question,
            sampling,
            context.engine_request_id(),
            deadline,
            adapter,
        )
        watcher = ReceiveWatcher(request.receive)
        result = await state.service.handle(gen, context, watcher, stream=False, on_first_event=images.free)
    finally:
        images.release()
    response.headers[CACHE_HEADER] = result.cache.value
    return InferResponse(response=result.text)


@router.post("/infer", responses=error_responses(400, 401, 408, 413, 415, 422, 429, 503, 504))
async def infer(
    body: InferRequest, request: Request, response: Response, state: StateDep, context: ContextDep
) -> InferResponse:
    image = await state.intake.load_base64(body.image)
    return await _answer(
        state, context, request, response, image, body.text, body.max_new_tokens, body, body.model
    )


@router.post("/v1/analyze", responses=error_responses(400, 401, 408, 413, 415, 422, 429, 503, 504))
async def analyze(
    request: Request,
    response: Response,
    state: StateDep,
    context: ContextDep,
    image: Annotated[UploadFile, File(description="The image file (JPEG, PNG or WebP).")],
    question: Annotated[str, Form(min_length=1, description="The question about the image.")],
    max_new_tokens: Annotated[int | None, Form(ge=1)] = None,
    model: Annotated[
        str | None, Form(description="A LoRA adapter served here; default: the base model.")
    ] = None,
) -> InferResponse:
    limit = state.settings.media.max_image_bytes
    data = await image.read(limit + 1)
    if len(data) > limit:  # only limit + 1 bytes were read: say "larger than", not a wrong size
        raise ImageTooLarge(f"The uploaded image is larger than {limit} bytes; the limit is {limit} bytes.")
    return await _answer(state, context, request, response, data, question, max_new_tokens, model=model)
