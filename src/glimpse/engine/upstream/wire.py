"""The OpenAI chat-completions wire format, as spoken to upstream servers.

Only this module knows field names of the upstream protocol: it turns a
``GenerationRequest`` into a streaming request body, server-sent events back into
chunks, and upstream error statuses into Glimpse errors. vLLM, SGLang, LMDeploy
and Glimpse itself all speak it; nothing here relies on one of them.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from glimpse import openai_wire
from glimpse.engine.protocol import (
    ChatMessage,
    FinishReason,
    GenerationRequest,
    ImagePart,
    ResponseFormat,
    TextPart,
    TokenLogprob,
    Tools,
)
from glimpse.errors import (
    EngineRequestError,
    GlimpseError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    RateLimited,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from glimpse.media.threads import BlockingRunner
from glimpse.openai_wire import StreamChunk

if TYPE_CHECKING:
    import httpx
    from PIL.Image import Image

__all__ = [
    "ImageEncoder",
    "StreamChunk",
    "chat_body",
    "encode_data_url",
    "error_for_status",
    "finish_reason",
    "parse_chunk",
    "resolve_model",
    "response_format_body",
    "token_logprobs",
    "tools_body",
]

logger = logging.getLogger(__name__)

_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.CANCELLED}


def encode_data_url(image: Image, png_max_pixels: int) -> str:
    """Lossless PNG where affordable (the upstream sees the pixels we validated); JPEG q95 beyond."""
    buffer = io.BytesIO()
    if image.width * image.height <= png_max_pixels:
        source = image if image.mode in ("RGB", "RGBA", "L") else image.convert("RGB")
        # Level 1: a fraction of the default's CPU time for a slightly larger body on a LAN.
        source.save(buffer, format="PNG", compress_level=1)
        mime = "image/png"
    else:
        source = image if image.mode == "RGB" else image.convert("RGB")
        source.save(buffer, format="JPEG", quality=95)
        mime = "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


class ImageEncoder:
    """Encodes images off the event loop, remembering recent ones (clients often resend an image)."""

    def __init__(self, *, png_max_pixels: int, runner: BlockingRunner, cache_entries: int = 32) -> None:
        self._png_max_pixels = png_max_pixels
        self._runner = runner
        self._cache: OrderedDict[tuple[str, int, int], str] = OrderedDict()
        self._cache_entries = cache_entries

    async def data_url(self, part: ImagePart) -> str:
        key = (part.sha256, part.image.width, part.image.height)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        try:
            url = await self._runner.run(encode_data_url, part.image, self._png_max_pixels)
        except (OSError, ValueError) as exc:
            raise EngineRequestError("could not encode an image for the upstream") from exc
        self._cache[key] = url
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)
        return url

    async def messages(self, messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
        wire: list[dict[str, Any]] = []
        for message in messages:
            if not message.images:
                # Plain strings are what every server accepts, system messages included.
                wire.append(_with_calls({"role": message.role, "content": message.text}, message))
                continue
            parts: list[dict[str, Any]] = []
            for part in message.content:
                if isinstance(part, TextPart):
                    parts.append({"type": "text", "text": part.text})
                else:
                    parts.append({"type": "image_url", "image_url": {"url": await self.data_url(part)}})
            wire.append(_with_calls({"role": message.role, "content": parts}, message))
        return wire


def _with_calls(wire: dict[str, Any], message: ChatMessage) -> dict[str, Any]:
    """An assistant's calls and a tool result's call id, in OpenAI's shape (calls alone: null content)."""
    if message.tool_calls:
        wire["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
        if not wire["content"]:
            wire["content"] = None
    if message.tool_call_id is not None:
        wire["tool_call_id"] = message.tool_call_id
    return wire


_PASSED_WHEN_SET = ("top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")


def chat_body(request: GenerationRequest, model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": sampling.max_new_tokens,
        # Unset temperature is greedy here as everywhere in Glimpse, whatever the upstream's default.
        "temperature": 0.0 if sampling.temperature is None else sampling.temperature,
        "top_p": 1.0 if sampling.top_p is None else sampling.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    # Sent only when the client set them: unset, the upstream applies its model's own defaults
    # (vLLM's and SGLang's generation_config), and strict OpenAI servers never see vLLM's extras.
    for name in _PASSED_WHEN_SET:
        value = getattr(sampling, name)
        if value is not None:
            body[name] = value
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.ignore_eos:
        # A vLLM/SGLang extension; sent only when asked so strict servers are not bothered.
        body["ignore_eos"] = True
    if request.template_kwargs:
        body["chat_template_kwargs"] = dict(request.template_kwargs)  # vLLM/SGLang extension too
    body.update(_output_controls(request))
    return body


def _output_controls(request: GenerationRequest) -> dict[str, Any]:
    """What shapes or reports on the answer, as the client sent it: the upstream enforces it."""
    sampling = request.sampling
    body: dict[str, Any] = {}
    if sampling.response_format is not None:
        body["response_format"] = response_format_body(sampling.response_format)
    if sampling.logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = sampling.logprobs
    if sampling.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias}
    if request.tools is not None:  # the upstream renders the tools and parses the calls
        body.update(tools_body(request.tools))
    return body


def tools_body(tools: Tools) -> dict[str, Any]:
    """``tools``, ``tool_choice`` and ``parallel_tool_calls`` as the client sent them."""
    choice: Any = tools.choice
    if tools.choice == "function":
        choice = {"type": "function", "function": {"name": tools.function}}
    body: dict[str, Any] = {"tools": json.loads(tools.definitions), "tool_choice": choice}
    if tools.parallel is not None:
        body["parallel_tool_calls"] = tools.parallel
    return body


def response_format_body(response_format: ResponseFormat) -> dict[str, Any]:
    """``response_format`` as the client sent it (the upstream enforces it: vLLM and SGLang do)."""
    if response_format.type == "json_object" or response_format.schema is None:
        return {"type": "json_object"}
    name = response_format.name or "response"  # OpenAI requires one
    spec: dict[str, Any] = {"name": name, "schema": json.loads(response_format.schema)}
    if response_format.description is not None:
        spec["description"] = response_format.description
    if response_format.strict is not None:
        spec["strict"] = response_format.strict
    return {"type": "json_schema", "json_schema": spec}


def parse_chunk(data: str) -> StreamChunk:
    """Interpret one stream event (``glimpse.openai_wire``'s reading); malformed data is ``UpstreamError``."""
    try:
        return openai_wire.parse_chunk(data)
    except openai_wire.MalformedChunk as exc:
        raise UpstreamError("upstream sent a malformed stream event") from exc


def token_logprobs(content: Sequence[Any]) -> tuple[TokenLogprob, ...]:
    """An upstream chunk's ``logprobs.content``, as sent; a malformed entry is ``UpstreamError``."""
    try:
        return tuple(_token_logprob(entry, top=True) for entry in content)
    except (KeyError, TypeError, ValueError) as exc:
        raise UpstreamError("upstream sent malformed logprobs") from exc


def _token_logprob(entry: Any, *, top: bool) -> TokenLogprob:
    token, logprob, raw = entry["token"], float(entry["logprob"]), entry.get("bytes")
    if not isinstance(token, str):
        raise TypeError("token is not a string")
    utf8 = token.encode("utf-8") if raw is None else bytes(raw)
    alternatives = entry.get("top_logprobs") or () if top else ()
    return TokenLogprob(token, logprob, utf8, tuple(_token_logprob(alt, top=False) for alt in alternatives))


def finish_reason(word: str | None) -> FinishReason | None:
    """Our finish reason for the upstream's word; anything else that ends a turn
    (``tool_calls``, ``content_filter`` ...) is a stop to us."""
    return None if word is None else _FINISH_REASONS.get(word, FinishReason.STOP)


def _retry_after(headers: httpx.Headers, max_s: int) -> int | None:
    """Whole seconds clamped to ``1..max_s``: an upstream's ``99999999999`` is not passed on."""
    seconds = openai_wire.parse_retry_after(headers.get("retry-after"))
    return None if seconds is None else max(1, math.ceil(min(seconds, max_s)))


def _body_message(body: bytes) -> str:
    try:
        return openai_wire.error_text(json.loads(body))
    except (ValueError, RecursionError):
        return body.decode("utf-8", "replace").strip()[: openai_wire.MAX_MESSAGE]


def error_for_status(
    status: int, headers: httpx.Headers, body: bytes, upstream: str, *, max_retry_after_s: int = 60
) -> GlimpseError:
    """The Glimpse error for a non-200 upstream answer.

    The client's fault (4xx) keeps the upstream's words, which tell the client what to
    fix; the upstream's own failure (5xx, a 404 that is no missing model) is summarised
    by its status, and its body only logged: a traceback with paths and environment
    variable names once reached a client verbatim.
    """
    message = _body_message(body)
    retry_after = _retry_after(headers, max_retry_after_s)
    if status in (401, 403):
        logger.error("upstream %s rejected our credentials (%d): %r", upstream, status, message)
        return UpstreamError("the upstream server rejected Glimpse's credentials")
    if status == 404 and "model" in message.lower():
        return ModelNotFound(message)
    if status == 413:
        return RequestTooLarge(message or "request too large for the upstream server")
    if status == 429:
        return RateLimited(message or "the upstream server is rate limiting", retry_after=retry_after)
    if 400 <= status < 500 and status not in (404, 408):
        return InvalidRequest(message or f"upstream rejected the request ({status})")
    logger.warning("upstream %s answered %d: %r", upstream, status, message)
    if status in (408, 504):
        return UpstreamTimeout(f"upstream timed out ({status})")
    if status == 503:
        return Overloaded("upstream unavailable (503)", retry_after=retry_after or 1)
    return UpstreamError(f"upstream failed ({status})")


def resolve_model(ours: str, theirs: Sequence[str]) -> str | None:
    """Map our model name to the upstream's: same name, same last path part, or its only model."""
    if ours in theirs:
        return ours
    tail = ours.rsplit("/", 1)[-1].lower()
    matches = [name for name in theirs if name.rsplit("/", 1)[-1].lower() == tail]
    if len(matches) == 1:
        return matches[0]
    if len(theirs) == 1:
        return theirs[0]
    return None
