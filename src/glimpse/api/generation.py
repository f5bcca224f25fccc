"""Small pieces every API surface shares: sampling limits, images, deadlines, completion ids."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pydantic import BaseModel, Field

from glimpse.config import EngineSettings, ServerSettings
from glimpse.engine.max_tokens import resolve_max_tokens
from glimpse.engine.protocol import Engine, ImagePart, ImageSizeCheck, ResponseFormat, SamplingParams
from glimpse.media import DecodedImage, ImageHeader
from glimpse.obs import new_request_id

__all__ = [
    "SamplingFields",
    "SizeCheck",
    "image_part",
    "image_size_check",
    "new_completion_id",
    "sampling_params",
    "with_deadline",
]


def new_completion_id() -> str:
    return f"chatcmpl-{new_request_id()}"


def image_part(decoded: DecodedImage) -> ImagePart:
    return ImagePart(decoded.image, decoded.sha256)


class SamplingFields(BaseModel):
    """The sampling parameters a request may set; unset ones take the model's recommended values.

    Shared by every API surface, so ``/infer`` and ``/v1/chat/completions`` validate them alike
    (a value out of range is a 422 naming the field). ``top_k``, ``min_p`` and
    ``repetition_penalty`` are vLLM's extensions to OpenAI's parameters.
    """

    temperature: float | None = Field(None, ge=0.0, le=2.0, description="0 decodes greedily.")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="Nucleus sampling: 1 keeps every token.")
    top_k: int | None = Field(
        None, ge=-1, description="Sample among the k most likely tokens; 0 or -1 keeps every token."
    )
    min_p: float | None = Field(
        None, ge=0.0, le=1.0, description="Drop tokens less likely than min_p times the most likely one."
    )
    repetition_penalty: float | None = Field(
        None,
        gt=0.0,
        le=2.0,
        description="Above 1 discourages tokens already in the prompt or the answer; 1 is off.",
    )
    presence_penalty: float | None = Field(
        None, ge=-2.0, le=2.0, description="Subtracted once from every token already in the answer."
    )
    frequency_penalty: float | None = Field(
        None, ge=-2.0, le=2.0, description="Subtracted from a token's logit per use in the answer so far."
    )
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1, description="A 64-bit seed for sampling.")


def sampling_params(
    settings: EngineSettings,
    *,
    max_tokens: int | None,
    fields: SamplingFields | None = None,
    stop: str | list[str] | None = None,
    ignore_eos: bool = False,
    response_format: ResponseFormat | None = None,
    logprobs: int | None = None,
    logit_bias: tuple[tuple[int, float], ...] = (),
) -> SamplingParams:
    """The engine's settings for a request: limits applied, unset sampling fields left unset.

    The engine fills those from the model (``SamplingResolver``), before the result cache
    is keyed. ``top_k`` -1 (vLLM's "off") becomes 0, the engine's.
    """
    max_new = resolve_max_tokens(
        max_tokens, default=settings.default_max_new_tokens, limit=settings.max_new_tokens_limit
    )
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    f = fields or SamplingFields()
    return SamplingParams(
        max_new_tokens=max_new,
        temperature=f.temperature,
        top_p=f.top_p,
        seed=f.seed,
        stop=stops,
        ignore_eos=ignore_eos,
        top_k=None if f.top_k is None else max(f.top_k, 0),
        min_p=f.min_p,
        repetition_penalty=f.repetition_penalty,
        presence_penalty=f.presence_penalty,
        frequency_penalty=f.frequency_penalty,
        response_format=response_format,
        logprobs=logprobs,
        logit_bias=logit_bias,
    )


def with_deadline(server: ServerSettings) -> float:
    return time.monotonic() + server.request_timeout_s


#: Checks a request's image headers against its ``max_new_tokens`` before anything is decoded.
SizeCheck = Callable[[Sequence[ImageHeader], int], None]


def image_size_check(engine: Engine) -> SizeCheck | None:
    """The engine's token budget as a check on image headers, if the engine can judge from sizes."""
    if not isinstance(engine, ImageSizeCheck):
        return None
    judge = engine

    def check(headers: Sequence[ImageHeader], max_new_tokens: int) -> None:
        judge.check_image_sizes([(h.width, h.height) for h in headers], max_new_tokens)

    return check
