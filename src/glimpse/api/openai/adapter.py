"""OpenAI chat-completions wire format ⇄ engine requests and events."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from typing import Any

from glimpse.api.choices import choice_requests, merged
from glimpse.api.generation import SizeCheck, image_part, sampling_params
from glimpse.api.service import Completion
from glimpse.api.streams import TokenStream
from glimpse.config import EngineSettings
from glimpse.engine.protocol import (
    ChatMessage,
    ContentPart,
    FinishReason,
    GenerationRequest,
    ResponseFormat,
    TextPart,
    TokenEvent,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
)
from glimpse.engine.sampling_config import check_sampling
from glimpse.errors import GlimpseError, InvalidRequest
from glimpse.guard.normalize import sanitize_model_text
from glimpse.media import DecodedBatch, DecodedImage, ImageHeader, ImageIntake

from .params import check_parameters
from .schemas import ChatCompletionRequest, ChatMessageIn, ImageURLPart, JSONSchemaFormat, ResponseFormatIn
from .tools import engine_tool_calls, engine_tools

__all__ = ["completion_body", "error_event", "sse_stream", "to_generation_request"]

#: Most entries in one ``logit_bias``: each is work for that request's row at every step.
MAX_LOGIT_BIAS = 1024
#: JSON has no infinity: a log-probability below this (a token the grammar forbids) is sent as it,
#: as vLLM does.
_LOWEST_LOGPROB = -9999.0


def _image_refs(messages: list[ChatMessageIn]) -> list[str]:
    """Every image reference, in order; refuses an image outside a user turn.

    Chat templates render images in user turns only, so an image in a system or
    assistant turn failed inside the engine as a 500 (which a gateway counts
    against the node). It is the client's mistake: a 400 that names the
    message, raised before any image is fetched or decoded.
    """
    refs: list[str] = []
    for index, message in enumerate(messages):
        if not isinstance(message.content, list):
            continue
        images = [p.image_url.url for p in message.content if isinstance(p, ImageURLPart)]
        if images and message.role != "user":
            raise InvalidRequest(
                f"Images are accepted in 'user' messages only; messages[{index}] is a "
                f"'{message.role}' message with an image.",
                param=f"messages[{index}].content",
            )
        refs.extend(images)
    return refs


async def to_generation_request(
    body: ChatCompletionRequest,
    request_id: str,
    deadline: float,
    intake: ImageIntake,
    settings: EngineSettings,
    size_check: SizeCheck | None = None,
    adapter: str | None = None,
) -> tuple[list[GenerationRequest], DecodedBatch]:
    """The engine requests, one per choice (``n``), and their decoded images, whose budget the
    caller must free or release.

    Everything that can refuse the request cheaply runs before any image is fetched
    or decoded (parameters Glimpse does not implement first); all images are sized from
    their headers (and ``size_check``ed, e.g. against the engine's token budget) before
    any is decoded.
    """
    check_parameters(body.model_extra or {})
    n = _choice_count(body.n, settings)
    response_format = _response_format(body.response_format)
    tools = engine_tools(body.tools, body.tool_choice, body.parallel_tool_calls)
    calls = [engine_tool_calls(message, index) for index, message in enumerate(body.messages)]
    refs = _image_refs(body.messages)
    intake.check_count(len(refs))
    if not any(m.role == "user" and m.content for m in body.messages):
        raise InvalidRequest(
            "messages must contain at least one 'user' message with content.", param="messages"
        )
    sampling = sampling_params(
        settings,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        fields=body,
        stop=body.stop,
        ignore_eos=body.ignore_eos,
        response_format=response_format,
        logprobs=_logprobs(body),
        logit_bias=_logit_bias(body.logit_bias),
    )
    check_sampling(sampling)  # top_logprobs and logit_bias ranges: the engine's own rules, named
    template_kwargs = tuple(sorted((body.chat_template_kwargs or {}).items()))
    blobs = await asyncio.gather(*(intake.load_reference(ref) for ref in refs))
    check = None if size_check is None else functools.partial(_check, size_check, sampling.max_new_tokens)
    images = await intake.decode_all(blobs, deadline, check)
    try:
        messages = _engine_messages(body.messages, iter(images.images))
    except BaseException:
        images.release()
        raise
    messages = [
        dataclasses.replace(message, tool_calls=tool_calls, tool_call_id=call_id)
        for message, (tool_calls, call_id) in zip(messages, calls, strict=True)
    ]
    gen = GenerationRequest(
        request_id, tuple(messages), sampling, deadline, template_kwargs, adapter=adapter, tools=tools
    )
    return choice_requests(gen, n), images


def _choice_count(n: int | None, settings: EngineSettings) -> int:
    if n is None:
        return 1
    if not 1 <= n <= settings.max_n:
        raise InvalidRequest(f"n must be from 1 to {settings.max_n} on this server, got {n}.", param="n")
    return n


def _logprobs(body: ChatCompletionRequest) -> int | None:
    """How many top tokens to report per answer token (``None``: no log-probabilities)."""
    top = body.top_logprobs
    if body.logprobs:
        return 0 if top is None else top  # its range is the engine's rule (check_sampling)
    if top:
        raise InvalidRequest("top_logprobs is for a request with logprobs: true.", param="top_logprobs")
    return None


def _logit_bias(wire: dict[str, Any] | None) -> tuple[tuple[int, float], ...]:
    """``(token id, bias)`` pairs, by id; the biases' range is the engine's rule (check_sampling)."""
    if not wire:
        return ()
    if len(wire) > MAX_LOGIT_BIAS:
        raise InvalidRequest(
            f"logit_bias may name at most {MAX_LOGIT_BIAS} tokens, got {len(wire)}.", param="logit_bias"
        )
    pairs: list[tuple[int, float]] = []
    for key, value in wire.items():
        canonical = key.isascii() and key.isdecimal() and (key == "0" or not key.startswith("0"))
        if not canonical or isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidRequest(
                f"logit_bias maps token ids (as strings of digits) to numbers; got {key!r}: {value!r}.",
                param="logit_bias",
            )
        pairs.append((int(key), float(value)))
    return tuple(sorted(pairs))


def _response_format(wire: ResponseFormatIn | None) -> ResponseFormat | None:
    """The engine's format (``text``, OpenAI's default, is none); the schema keeps the client's key order,
    which is the order the answer's properties come in."""
    if wire is None or wire.type == "text":
        return None
    if not isinstance(wire, JSONSchemaFormat):
        return ResponseFormat("json_object")
    spec = wire.json_schema
    if spec.schema_ is None:
        raise InvalidRequest(
            "response_format.json_schema.schema is required: the JSON Schema the answer must follow.",
            param="response_format",
        )
    schema = json.dumps(spec.schema_, ensure_ascii=False, separators=(",", ":"))
    return ResponseFormat("json_schema", schema, spec.name, spec.description, spec.strict)


def _check(size_check: SizeCheck, max_new_tokens: int, headers: Sequence[ImageHeader]) -> None:
    size_check(headers, max_new_tokens)


def _engine_messages(wire: list[ChatMessageIn], decoded: Iterator[DecodedImage]) -> list[ChatMessage]:
    messages: list[ChatMessage] = []
    for message in wire:
        role = "system" if message.role == "developer" else message.role
        parts: list[ContentPart] = []
        if isinstance(message.content, str):
            parts.append(TextPart(sanitize_model_text(message.content)))
        elif message.content is not None:
            for part in message.content:
                parts.append(
                    image_part(next(decoded))
                    if isinstance(part, ImageURLPart)
                    else TextPart(sanitize_model_text(part.text))
                )
        messages.append(ChatMessage(role, tuple(parts)))
    return messages


def _finish(reason: FinishReason | None, called: bool = False) -> str | None:
    """OpenAI's finish reason; an answer that ended after calling functions says ``tool_calls``."""
    if reason is None:
        return None
    if reason is FinishReason.LENGTH:
        return "length"
    return "tool_calls" if called else "stop"


def _tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def _tool_call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": delta.arguments}
    if delta.name is not None:
        function = {"name": delta.name, **function}
    out: dict[str, Any] = {"index": delta.index}
    if delta.id is not None:
        out.update(id=delta.id, type="function")
    out["function"] = function
    return out


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _message(result: Completion) -> dict[str, Any]:
    # With calls and no text, content is null (OpenAI's and vLLM's shape).
    content = result.text if result.text or not result.tool_calls else None
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if result.reasoning:
        message["reasoning_content"] = result.reasoning  # as vLLM and DeepSeek send it
    if result.tool_calls:
        message["tool_calls"] = [_tool_call(call) for call in result.tool_calls]
    return message


def _logprob(entry: TokenLogprob) -> dict[str, Any]:
    return {"token": entry.token, "logprob": max(entry.logprob, _LOWEST_LOGPROB), "bytes": list(entry.utf8)}


def _logprobs_body(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    """OpenAI's ``choices[].logprobs``: one entry per answer token, with its most likely alternatives."""
    content = [{**_logprob(entry), "top_logprobs": [_logprob(top) for top in entry.top]} for entry in entries]
    return {"content": content, "refusal": None}


def completion_body(
    completion_id: str, model: str, results: Sequence[Completion], logprobs: bool = False
) -> dict[str, Any]:
    """A ``chat.completion`` with one choice per result; ``usage`` counts the prompt once."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": index,
                "message": _message(result),
                "finish_reason": _finish(result.finish_reason, bool(result.tool_calls)),
                "logprobs": _logprobs_body(result.logprobs) if logprobs else None,
            }
            for index, result in enumerate(results)
        ],
        "usage": _usage(results[0].prompt_tokens, sum(result.completion_tokens for result in results)),
    }


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def error_event(exc: GlimpseError) -> str:
    return _sse({"error": {"message": exc.message, "type": exc.error_type, "code": exc.code, "param": None}})


async def _one(first: TokenEvent, rest: TokenStream) -> AsyncGenerator[tuple[int, TokenEvent], None]:
    """A single choice's events, up to its final one; closing this closes ``rest``."""
    event = first
    try:
        yield 0, event
        while event.finish_reason is None:
            event = await rest.__anext__()
            yield 0, event
    finally:
        await rest.aclose()


def _deltas(event: TokenEvent) -> list[tuple[dict[str, Any], Sequence[TokenLogprob]]]:
    """One event's chunk deltas, in order: thinking, answer text (with its log-probabilities), calls."""
    deltas: list[tuple[dict[str, Any], Sequence[TokenLogprob]]] = []
    if event.reasoning:
        deltas.append(({"reasoning_content": event.reasoning}, ()))
    if event.text or event.logprobs:
        deltas.append(({"content": event.text}, event.logprobs))
    if event.tool_calls:
        deltas.append(({"tool_calls": [_tool_call_delta(d) for d in event.tool_calls]}, ()))
    return deltas


async def sse_stream(
    completion_id: str,
    model: str,
    choices: Sequence[tuple[TokenEvent, TokenStream]],
    include_usage: bool,
    logprobs: bool = False,
) -> AsyncIterator[str]:
    """OpenAI ``chat.completion.chunk`` events, ending with ``data: [DONE]``.

    ``choices`` are each choice's first event and the rest of its stream; their chunks
    interleave as their tokens come, each with its choice's ``index``. The usage chunk
    (when asked for) follows the last choice's end.
    """
    created = int(time.time())

    def chunk(
        index: int,
        delta: dict[str, Any],
        finish: str | None,
        entries: Sequence[TokenLogprob] = (),
    ) -> str:
        choice = {
            "index": index,
            "delta": delta,
            "finish_reason": finish,
            "logprobs": _logprobs_body(entries) if logprobs and entries else None,
        }
        body: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }
        if include_usage:
            body["usage"] = None
        return _sse(body)

    events = _one(*choices[0]) if len(choices) == 1 else merged(choices)
    finals: dict[int, TokenEvent] = {}
    called: set[int] = set()  # choices that made a tool call: they finish with "tool_calls"
    try:  # from the first chunk on: a client gone at any yield still closes every choice's stream
        for index in range(len(choices)):
            yield chunk(index, {"role": "assistant", "content": ""}, None)
        async for index, event in events:
            for delta, entries in _deltas(event):
                yield chunk(index, delta, None, entries)
            if event.tool_calls:
                called.add(index)
            if event.finish_reason is not None:
                finals[index] = event
                yield chunk(index, {}, _finish(event.finish_reason, index in called))
        if include_usage:
            prompt = max((final.prompt_tokens for final in finals.values()), default=0)
            final = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(prompt, sum(final.completion_tokens for final in finals.values())),
            }
            yield _sse(final)
    except GlimpseError as exc:  # after the 200 was sent, an error can only be an event
        yield error_event(exc)
    finally:
        await events.aclose()
    yield _sse("[DONE]")
