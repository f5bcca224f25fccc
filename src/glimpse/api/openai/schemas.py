"""Wire schemas of the OpenAI-compatible chat completions API (the subset we serve)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "ChatCompletionRequest",
    "ChatMessageIn",
    "ImageURL",
    "ImageURLPart",
    "StreamOptions",
    "TextContentPart",
]


class _Lenient(BaseModel):
    # Clients (the openai SDK, LangChain, ...) send fields we do not use; accept and ignore them.
    model_config = ConfigDict(extra="ignore")


class TextContentPart(_Lenient):
    type: Literal["text"]
    text: str


class ImageURL(_Lenient):
    url: str = Field(description="A data URL (data:image/png;base64,...) or, when enabled, an http(s) URL.")
    detail: Literal["auto", "low", "high"] | None = None


class ImageURLPart(_Lenient):
    type: Literal["image_url"]
    image_url: ImageURL

    @field_validator("image_url", mode="before")
    @classmethod
    def _accept_bare_string(cls, value: Any) -> Any:
        return {"url": value} if isinstance(value, str) else value


ContentPartIn = Annotated[TextContentPart | ImageURLPart, Field(discriminator="type")]


class ChatMessageIn(_Lenient):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPartIn] | None = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str | None = None
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="Only one choice per request is supported.")
    user: str | None = None
    ignore_eos: bool = Field(False, description="vLLM extension: generate exactly max_tokens tokens.")
    chat_template_kwargs: dict[str, str | int | float | bool] | None = Field(
        None,
        max_length=8,
        description='vLLM extension: chat-template variables, e.g. {"enable_thinking": false}.',
    )

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings of at most 64 characters")
        return value
