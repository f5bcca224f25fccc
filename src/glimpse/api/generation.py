"""Small pieces every API surface shares: sampling limits, images, deadlines, completion ids."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Sequence

from glimpse.config import EngineSettings, ServerSettings
from glimpse.engine.max_tokens import resolve_max_tokens
from glimpse.engine.protocol import Engine, ImagePart, ImageSizeCheck, SamplingParams
from glimpse.media import DecodedImage, ImageHeader

__all__ = [
    "SizeCheck",
    "image_part",
    "image_size_check",
    "new_completion_id",
    "sampling_params",
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
    max_new = resolve_max_tokens(
        max_tokens, default=settings.default_max_new_tokens, limit=settings.max_new_tokens_limit
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
