"""The cached form of a finished answer."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TypeGuard

__all__ = ["CachedResult"]

_FORMAT = 1


@dataclass(slots=True, frozen=True)
class CachedResult:
    """A finished answer, kept as the chunks it was produced in.

    The chunks let a streaming request that hits the cache still stream, in the
    same pieces the original produced; ``text`` is their concatenation, kept so
    non-streaming callers need not join.
    """

    text: str
    chunks: tuple[str, ...]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    #: The model's thinking, when the engine separated it from the answer.
    reasoning: str = ""
    #: The function calls the answer made: ``(id, name, arguments)`` each.
    tool_calls: tuple[tuple[str, str, str], ...] = ()

    def to_bytes(self) -> bytes:
        fields: dict[str, object] = {
            "f": _FORMAT,
            "text": self.text,
            "chunks": list(self.chunks),
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "reasoning": self.reasoning,
        }
        if self.tool_calls:  # absent otherwise: entries without calls read as before
            fields["tool_calls"] = [list(call) for call in self.tool_calls]
        return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> CachedResult:
        """Parse and check a stored value; ``ValueError`` if it is not one of ours.

        A shared Redis may hold anything (another version, a corrupted write), and
        a bad entry must become a miss, not a garbled answer.
        """
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError("cached value is not JSON") from exc
        if not isinstance(raw, dict) or raw.get("f") != _FORMAT:
            raise ValueError("cached value has an unknown format")
        text, chunks, finish = raw.get("text"), raw.get("chunks"), raw.get("finish_reason")
        prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
        reasoning = raw.get("reasoning", "")
        calls = raw.get("tool_calls", [])
        if not (
            isinstance(calls, list)
            and all(
                isinstance(call, list) and len(call) == 3 and all(isinstance(v, str) for v in call)
                for call in calls
            )
        ):
            raise ValueError("cached value has malformed tool calls")
        if not (
            isinstance(reasoning, str)
            and isinstance(text, str)
            and isinstance(finish, str)
            and isinstance(chunks, list)
            and all(isinstance(chunk, str) for chunk in chunks)
            and _is_count(prompt)
            and _is_count(completion)
        ):
            raise ValueError("cached value has wrong field types")
        return cls(
            text=text,
            chunks=tuple(chunks),
            finish_reason=finish,
            prompt_tokens=prompt,
            completion_tokens=completion,
            reasoning=reasoning,
            tool_calls=tuple((call[0], call[1], call[2]) for call in calls),
        )


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
