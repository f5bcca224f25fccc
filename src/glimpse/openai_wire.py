"""What every reader of an OpenAI-compatible server parses alike: stream chunks and ``Retry-After``.

The upstream engine (reading vLLM, SGLang or another Glimpse) and the clients
(``glimpse bench``, ``batch``, ``ask``) read the same events and headers; one parser
keeps them from disagreeing on what a chunk holds (a thinking model's reasoning, an
error event, usage) or how long "come back later" is. Stdlib only, and below both
``engine`` and ``client``, so either may import it; each turns the neutral results
here into its own types (the engine's ``FinishReason`` and errors, the bench's counts).
"""

from __future__ import annotations

import email.utils
import json
import re
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["MalformedChunk", "StreamChunk", "error_text", "parse_chunk", "parse_retry_after"]

#: Longest server message kept: enough to act on, too short to carry a traceback's worth.
MAX_MESSAGE = 500

#: delta-seconds (RFC 9110), with a fraction as some servers send; ASCII digits only
#: ("²".isdigit() is true and float() refuses it).
_DELTA_SECONDS = re.compile(r"\d+(?:\.\d*)?", re.ASCII)


class MalformedChunk(ValueError):
    """The event is not a JSON object of the chunk shape (or its usage is not numbers)."""


@dataclass(slots=True, frozen=True)
class StreamChunk:
    """One ``chat.completion.chunk`` (first choice), or an error event when ``error`` is set."""

    text: str = ""
    #: Thinking text (``reasoning_content``, or ``reasoning`` as some servers name it).
    reasoning: str = ""
    #: The server's own word (``stop``, ``length``, ``tool_calls`` ...), as sent.
    finish_reason: str | None = None
    #: ``(prompt_tokens, completion_tokens)`` when the chunk carries usage.
    usage: tuple[int, int] | None = None
    #: The server's words when this is an error event.
    error: str | None = None
    #: ``logprobs.content`` as sent (one JSON object per token), for the reader to interpret.
    logprobs: tuple[Any, ...] = ()
    #: Pieces of function calls (``delta.tool_calls``): ``(index, id, name, arguments)`` each.
    tool_calls: tuple[tuple[int, str | None, str | None, str], ...] = ()


def error_text(payload: Any) -> str:
    """The message of an error body or event, whichever shape the server uses; ``""`` if none."""
    if isinstance(payload, dict):
        inner = payload.get("error", payload)
        if isinstance(inner, dict):
            message = inner.get("message") or inner.get("detail")
            if message:
                return str(message)[:MAX_MESSAGE]
        elif isinstance(inner, str):
            return inner[:MAX_MESSAGE]
        if "detail" in payload:
            return str(payload["detail"])[:MAX_MESSAGE]
    return ""


def _tool_calls(items: Any) -> tuple[tuple[int, str | None, str | None, str], ...]:
    """``delta.tool_calls`` as neutral tuples; items of another shape are skipped."""
    calls = []
    for position, item in enumerate(items if isinstance(items, list) else ()):
        if not isinstance(item, dict):
            continue
        index = item.get("index", position)
        function = item.get("function")
        if not isinstance(function, dict):
            function = {}
        call_id, name, arguments = item.get("id"), function.get("name"), function.get("arguments")
        calls.append(
            (
                index if isinstance(index, int) and not isinstance(index, bool) else position,
                call_id if isinstance(call_id, str) else None,
                name if isinstance(name, str) else None,
                arguments if isinstance(arguments, str) else "",
            )
        )
    return tuple(calls)


def parse_chunk(data: str) -> StreamChunk:
    """One event's data (``[DONE]`` is the caller's); ``MalformedChunk`` if it is not a chunk."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: JSON nested thousands deep
        raise MalformedChunk("not JSON") from exc
    if not isinstance(payload, dict):
        raise MalformedChunk("not a JSON object")
    if "error" in payload or payload.get("object") == "error":
        return StreamChunk(error=error_text(payload) or "unknown error")
    text = reasoning = ""
    calls: tuple[tuple[int, str | None, str | None, str], ...] = ()
    finish: str | None = None
    logprobs: tuple[Any, ...] = ()
    choices = payload.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta["content"] if isinstance(delta.get("content"), str) else ""
            # Servers name it either way, and some send both with one of them null.
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            reasoning = thought if isinstance(thought, str) else ""
            calls = _tool_calls(delta.get("tool_calls"))
        reason = choice.get("finish_reason")
        finish = reason if isinstance(reason, str) else None
        found = choice.get("logprobs")
        content = found.get("content") if isinstance(found, dict) else None
        logprobs = tuple(content) if isinstance(content, list) else ()
    usage = payload.get("usage")
    counts: tuple[int, int] | None = None
    if isinstance(usage, dict):
        try:
            counts = (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
        except (TypeError, ValueError) as exc:
            raise MalformedChunk("usage is not numbers") from exc
    return StreamChunk(
        text=text,
        reasoning=reasoning,
        finish_reason=finish,
        usage=counts,
        error=None,
        logprobs=logprobs,
        tool_calls=calls,
    )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP date.

    ``None`` when absent or unreadable (a negative number included); a past date is
    ``0.0``. A huge number comes back as ``inf`` (never an ``int()`` of thousands of
    digits): callers clamp it to what they are willing to wait.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)
