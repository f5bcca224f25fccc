"""Wire schemas of the simple API: ``/infer`` (JSON) and ``/v1/analyze`` (multipart)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from glimpse.api.generation import SamplingFields

__all__ = ["InferRequest", "InferResponse"]


class InferRequest(SamplingFields):
    model_config = ConfigDict(extra="ignore")

    image: str = Field(min_length=1, description="The image, base64-encoded (a data URL is accepted too).")
    text: str = Field(min_length=1, description="The question about the image.")
    max_new_tokens: int | None = Field(None, ge=1, description="Most tokens in the answer.")
    model: str | None = Field(
        None,
        description="A LoRA adapter served here (see /v1/models) to answer with; default: the base model.",
    )


class InferResponse(BaseModel):
    response: str
