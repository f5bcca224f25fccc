"""OpenAI chat-completions wire format ⇄ engine requests and events."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from glimpse.api.generation import image_part, sampling_params
from glimpse.api.service import Completion
from glimpse.config import EngineSettings
from glimpse.engine.protocol import (
    ChatMessage,
    ContentPart,
    FinishReason,
    GenerationRequest,
    TextPart,
    TokenEvent,
)
from glimpse.errors import GlimpseError, InvalidRequest
from glimpse.media import ImageIntake

from .schemas import ChatCompletionRequest, ChatMessageIn, ImageURLPart

__all__ = ["completion_body", "error_event", "sse_stream", "to_generation_request"]


def _image_refs(messages: list[ChatMessageIn]) -> list[str]:
    refs: list[str] = []
    for message in messages:
        if isinstance(message.content, list):
            refs.extend(p.image_url.url for p in message.content if isinstance(p, ImageURLPart))
    return refs


async def to_generation_request(
    body: ChatCompletionRequest,
    request_id: str,
    deadline: float,
    intake: ImageIntake,
    settings: EngineSettings,
) -> GenerationRequest:
    refs = _image_refs(body.messages)
    intake.check_count(len(refs))
    if not any(m.role == "user" and m.content for m in body.messages):
        raise InvalidRequest(
            "messages must contain at least one 'user' message with content.", param="messages"
        )
    decoded = iter(await asyncio.gather(*(intake.from_reference(ref) for ref in refs)))
    messages: list[ChatMessage] = []
    for message in body.messages:
        role = "system" if message.role == "developer" else message.role
        parts: list[ContentPart] = []
        if isinstance(message.content, str):
            parts.append(TextPart(message.content))
        elif message.content is not None:
            for part in message.content:
                parts.append(
                    image_part(next(decoded)) if isinstance(part, ImageURLPart) else TextPart(part.text)
                )
        messages.append(ChatMessage(role, tuple(parts)))
    sampling = sampling_params(
        settings,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stop,
        ignore_eos=body.ignore_eos,
    )
    template_kwargs = tuple(sorted((body.chat_template_kwargs or {}).items()))
    return GenerationRequest(request_id, tuple(messages), sampling, deadline, template_kwargs)


def _finish(reason: FinishReason | None) -> str | None:
    if reason is None:
        return None
    return "length" if reason is FinishReason.LENGTH else "stop"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _message(result: Completion) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": result.text}
    if result.reasoning:
        message["reasoning_content"] = result.reasoning  # as vLLM and DeepSeek send it
    return message


def completion_body(completion_id: str, model: str, result: Completion) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": _message(result),
                "finish_reason": _finish(result.finish_reason),
                "logprobs": None,
            }
        ],
        "usage": _usage(result.prompt_tokens, result.completion_tokens),
    }


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def error_event(exc: GlimpseError) -> str:
    return _sse({"error": {"message": exc.message, "type": exc.error_type, "code": exc.code, "param": None}})


async def sse_stream(
    completion_id: str,
    model: str,
    first: TokenEvent,
    rest: AsyncIterator[TokenEvent],
    include_usage: bool,
    on_usage: Callable[[int, int], Awaitable[None]] | None = None,
) -> AsyncIterator[str]:
    """OpenAI ``chat.completion.chunk`` events, ending with ``data: [DONE]``.

    ``on_usage(prompt_tokens, completion_tokens)`` runs once the answer is complete.
    """
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None, usage: dict[str, int] | None = None) -> str:
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        }
        if include_usage:
            body["usage"] = usage
        return _sse(body)

    yield chunk({"role": "assistant", "content": ""}, None)
    event = first
    try:
        while True:
            if event.reasoning:
                yield chunk({"reasoning_content": event.reasoning}, None)
            if event.text:
                yield chunk({"content": event.text}, None)
            if event.finish_reason is not None:
                if on_usage is not None:
                    await on_usage(event.prompt_tokens, event.completion_tokens)
                yield chunk({}, _finish(event.finish_reason))
                if include_usage:
                    final = {
                        "id": completion_id,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model,
                        "choices": [],
                        "usage": _usage(event.prompt_tokens, event.completion_tokens),
                    }
                    yield _sse(final)
                break
            event = await rest.__anext__()
    except GlimpseError as exc:  # after the 200 was sent, an error can only be an event
        yield error_event(exc)
    finally:
        await rest.aclose()  # type: ignore[attr-defined]
    yield _sse("[DONE]")
