"""Wire schemas of the OpenAI-compatible chat completions API (the subset we serve)."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, field_validator, model_validator

from glimpse.api.generation import SamplingFields

__all__ = [
    "ChatCompletionRequest",
    "ChatMessageIn",
    "FunctionCallIn",
    "ImageURL",
    "ImageURLPart",
    "JSONObjectFormat",
    "JSONSchemaFormat",
    "JSONSchemaSpec",
    "ResponseFormatIn",
    "StreamOptions",
    "TextContentPart",
    "TextFormat",
    "ToolCallIn",
]


class _Lenient(BaseModel):
    # Clients (the openai SDK, LangChain, ...) send fields we do not use; accept and ignore them.
    model_config = ConfigDict(extra="ignore")


#: ``apply_chat_template``'s own arguments: a request may set template variables, never these
#: (``chat_template`` would let a client replace the server's template, skipping the prompt guard).
_RESERVED_TEMPLATE_KEYS = frozenset(
    {
        "chat_template",
        "tokenize",
        "add_generation_prompt",
        "continue_final_message",
        "return_dict",
        "return_tensors",
        "return_assistant_tokens_mask",
        "padding",
        "truncation",
        "max_length",
        "tools",
        "documents",
        "messages",
        "conversation",
        "tokenizer_kwargs",
        "processor_kwargs",
    }
)
#: A chat-template variable's value: a scalar (NaN and infinities cannot go into a cache key).
TemplateValue = bool | int | FiniteFloat | Annotated[str, Field(max_length=256)]
_TEMPLATE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _reject_lone_surrogates(value: Any, path: str = "body") -> None:
    """JSON's ``\\ud800`` escapes decode to strings no UTF-8 can hold; refuse them at the door."""
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise ValueError(f"{path} contains an unpaired UTF-16 surrogate, which is not valid Unicode text")
    elif isinstance(value, dict):
        for key, item in value.items():
            _reject_lone_surrogates(key, path)
            _reject_lone_surrogates(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _reject_lone_surrogates(item, f"{path}[{index}]")


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


class FunctionCallIn(_Lenient):
    name: str
    arguments: str = Field(description="The call's arguments: a JSON object, as text.")


class ToolCallIn(_Lenient):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessageIn(_Lenient):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPartIn] | None = None
    tool_calls: list[ToolCallIn] | None = Field(None, description="An assistant turn's function calls.")
    tool_call_id: str | None = Field(None, description="A tool turn: the call it answers.")


class StreamOptions(_Lenient):
    include_usage: bool = False


class _Exact(BaseModel):
    # A misspelt key in response_format would change what the answer must be: refuse it.
    model_config = ConfigDict(extra="forbid")


class TextFormat(_Exact):
    type: Literal["text"]


class JSONObjectFormat(_Exact):
    type: Literal["json_object"]


class JSONSchemaSpec(_Exact):
    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="The schema's name (OpenAI's rule).")
    description: str | None = None
    schema_: dict[str, Any] | bool | None = Field(
        None, alias="schema", description="A JSON Schema; the answer is decoded to be valid against it."
    )
    strict: bool | None = Field(None, description="Accepted either way: every schema is enforced.")


class JSONSchemaFormat(_Exact):
    type: Literal["json_schema"]
    json_schema: JSONSchemaSpec


ResponseFormatIn = Annotated[TextFormat | JSONObjectFormat | JSONSchemaFormat, Field(discriminator="type")]


class ChatCompletionRequest(SamplingFields, _Lenient):
    # Undeclared fields are kept (``model_extra``) for ``params.check_parameters`` to refuse
    # or ignore by name; nested models stay lenient.
    model_config = ConfigDict(extra="allow")

    model: str | None = None
    messages: list[ChatMessageIn] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormatIn | None = Field(
        None, description="Structured output: json_object, or json_schema enforced while decoding."
    )
    # Checked by ``tools.engine_tools``, which names what is wrong in a 400 (as OpenAI does).
    tools: list[Any] | None = Field(
        None, description='Functions the model may call: [{"type": "function", "function": {...}}].'
    )
    tool_choice: Any = Field(
        None, description='"auto", "none", "required" or {"type": "function", "function": {"name": ...}}.'
    )
    parallel_tool_calls: bool | None = Field(None, description="Whether several calls may come at once.")
    ignore_eos: bool = Field(False, description="vLLM extension: generate exactly max_tokens tokens.")
    # Checked by the adapter, which refuses a bad value with a 400 naming the parameter, as OpenAI does.
    logprobs: bool | None = Field(
        None, strict=True, description="Return each answer token's log-probability."
    )
    top_logprobs: int | None = Field(
        None, strict=True, description="With logprobs: the 0 to 20 most likely tokens at each position too."
    )
    n: int | None = Field(
        None,
        strict=True,
        description="Choices to generate, each its own answer (at most the server's max_n).",
    )
    logit_bias: dict[str, Any] | None = Field(
        None,
        description="Token id (a string) -> a bias from -100 to 100, added to its logit before sampling.",
    )
    chat_template_kwargs: (
        dict[str, bool | int | FiniteFloat | Annotated[str, Field(max_length=256)]] | None
    ) = Field(
        None,
        max_length=8,
        description='vLLM extension: chat-template variables, e.g. {"enable_thinking": false}.',
    )

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        _reject_lone_surrogates(data)
        return data

    @field_validator("chat_template_kwargs")
    @classmethod
    def _template_variables_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        for key in value or {}:
            if key in _RESERVED_TEMPLATE_KEYS or not _TEMPLATE_KEY.fullmatch(key):
                raise ValueError(
                    f"chat_template_kwargs may set template variables only; {key!r} is not allowed"
                )
        return value

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s or len(s) > 64 for s in stops):
            raise ValueError("stop takes at most 4 non-empty strings of at most 64 characters")
        return value
