"""The simple API's shape ⇄ engine requests: one image, one question, one answer."""

from __future__ import annotations

from glimpse.api.generation import image_part
from glimpse.engine.protocol import ChatMessage, GenerationRequest, SamplingParams, TextPart
from glimpse.guard.normalize import sanitize_model_text
from glimpse.media import DecodedImage

__all__ = ["to_generation_request"]


def to_generation_request(
    image: DecodedImage,
    question: str,
    sampling: SamplingParams,
    request_id: str,
    deadline: float,
    adapter: str | None = None,
) -> GenerationRequest:
    # Invisible smuggling characters are removed here, so the guard screens what the model reads.
    message = ChatMessage("user", (image_part(image), TextPart(sanitize_model_text(question))))
    return GenerationRequest(request_id, (message,), sampling, deadline, adapter=adapter)
