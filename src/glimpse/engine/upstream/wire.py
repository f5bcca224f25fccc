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
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from glimpse.engine.protocol import ChatMessage, FinishReason, GenerationRequest, ImagePart, TextPart
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

if TYPE_CHECKING:
    import httpx
    from PIL.Image import Image

__all__ = [
    "ImageEncoder",
    "StreamChunk",
    "chat_body",
    "encode_data_url",
    "error_for_status",
    "parse_chunk",
    "resolve_model",
]

logger = logging.getLogger(__name__)

_FINISH_REASONS = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH, "abort": FinishReason.CANCELLED}
_MAX_MESSAGE = 500


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
                wire.append({"role": message.role, "content": message.text})
                continue
            parts: list[dict[str, Any]] = []
            for part in message.content:
                if isinstance(part, TextPart):
                    parts.append({"type": "text", "text": part.text})
                else:
                    parts.append({"type": "image_url", "image_url": {"url": await self.data_url(part)}})
            wire.append({"role": message.role, "content": parts})
        return wire


def chat_body(request: GenerationRequest, model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    sampling = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "max_tokens": sampling.max_new_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.ignore_eos:
        # A vLLM/SGLang extension; sent only when asked so strict servers are not bothered.
        body["ignore_eos"] = True
    if request.template_kwargs:
        body["chat_template_kwargs"] = dict(request.template_kwargs)  # vLLM/SGLang extension too
    return body


@dataclass(slots=True, frozen=True)
class StreamChunk:
    text: str = ""
    finish_reason: FinishReason | None = None
    #: Thinking text (``reasoning_content``, or ``reasoning`` as some servers name it).
    reasoning: str = ""
    #: ``(prompt_tokens, completion_tokens)`` when the chunk carries usage.
    usage: tuple[int, int] | None = None
    #: The upstream's own words when this is an error event (for the log, never the client).
    error: str | None = None


def _error_message(payload: Any) -> str:
    if isinstance(payload, dict):
        inner = payload.get("error", payload)
        if isinstance(inner, dict):
            message = inner.get("message") or inner.get("detail")
            if message:
                return str(message)[:_MAX_MESSAGE]
        elif isinstance(inner, str):
            return inner[:_MAX_MESSAGE]
        if "detail" in payload:
            return str(payload["detail"])[:_MAX_MESSAGE]
    return ""


def parse_chunk(data: str) -> StreamChunk:
    """Interpret one ``chat.completion.chunk`` or error event; malformed data is ``UpstreamError``."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
        raise UpstreamError("upstream sent a malformed stream event") from exc
    if not isinstance(payload, dict):
        raise UpstreamError("upstream sent a malformed stream event")
    if "error" in payload or payload.get("object") == "error":
        return StreamChunk(error=_error_message(payload) or "unknown error")
    text = reasoning = ""
    finish: FinishReason | None = None
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta["content"] if isinstance(delta.get("content"), str) else ""
            # Servers name it either way, and some send both with one of them null.
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            reasoning = thought if isinstance(thought, str) else ""
        reason = choice.get("finish_reason")
        if isinstance(reason, str):
            # Anything else that ends a turn (tool_calls, content_filter, ...) is a stop to us.
            finish = _FINISH_REASONS.get(reason, FinishReason.STOP)
    usage = payload.get("usage")
    counts: tuple[int, int] | None = None
    if isinstance(usage, dict):
        try:
            counts = (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        except (TypeError, ValueError) as exc:
            raise UpstreamError("upstream sent malformed usage") from exc
    return StreamChunk(text=text, finish_reason=finish, usage=counts, reasoning=reasoning)


def _retry_after(headers: httpx.Headers, max_s: int) -> int | None:
    """Delay seconds clamped to ``1..max_s`` (an upstream's ``99999999999`` is not passed on);
    an HTTP date or anything else is ignored."""
    value = headers.get("retry-after", "").strip()
    # isascii: "²".isdigit() is true and int() refuses it.
    if not (value.isascii() and value.isdigit()):
        return None
    digits = value.lstrip("0") or "0"
    # A long digit string is huge: no int() of it (Python refuses past 4300 digits).
    return max_s if len(digits) > len(str(max_s)) else min(max(1, int(digits)), max_s)


def _body_message(body: bytes) -> str:
    try:
        return _error_message(json.loads(body))
    except (ValueError, RecursionError):
        return body.decode("utf-8", "replace").strip()[:_MAX_MESSAGE]


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
