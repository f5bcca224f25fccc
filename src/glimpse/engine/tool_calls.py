"""GLM-4.x tool calls: the model's markup read into OpenAI tool calls, as the answer streams.

GLM-4.5, 4.6 and 4.6V write a function call as their chat templates teach it (and as
vLLM's ``glm45`` tool parser reads it)::

    <tool_call>get_weather
    <arg_key>city</arg_key>
    <arg_value>Paris</arg_value>
    </tool_call>

``ToolCallParser`` takes the answer's text piece by piece and gives back the text
outside the calls and OpenAI ``tool_calls`` deltas: a call's id and name once its
name is complete, then its arguments as a JSON object whose text grows one whole
argument at a time and closes with the call (re-read and diffed, as vLLM does, so
what was sent is always a prefix of the final arguments). A value is kept as text
where the function's schema says the parameter is a ``string``, and read as JSON
otherwise (text again if it is not JSON), as vLLM reads it. Text that might still
become ``<tool_call>`` is held back until it cannot; a stretch of whitespace alone
between calls (or before or after them) is not content. A call cut off by
``max_tokens`` stays open: its arguments end where the answer did, and the finish
reason says ``length``.
"""

from __future__ import annotations

import dataclasses
import json
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from glimpse.engine.protocol import TokenEvent, ToolCall, ToolCallDelta

__all__ = [
    "CALL_END",
    "CALL_START",
    "TOOL_MARKUP",
    "ToolCallParser",
    "answer_text",
    "collect_tool_calls",
    "markup_hidden_ids",
    "new_call_id",
    "string_parameters",
]

CALL_START = "<tool_call>"
CALL_END = "</tool_call>"
#: The markers of a call (GLM-4.6V's tokenizer has each as a token of its own).
TOOL_MARKUP = (CALL_START, CALL_END, "<arg_key>", "</arg_key>", "<arg_value>", "</arg_value>")
_PAIR = re.compile(r"<arg_key>(.*?)</arg_key>\s*<arg_value>(.*?)</arg_value>", re.DOTALL)
_NAME_END = re.compile(r"\n|<arg_key>|</tool_call>")
_WHITESPACE = " \t\r\n"


def new_call_id() -> str:
    """A fresh call id in OpenAI's shape (``call_`` and 24 hex digits)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def answer_text(tokenizer: Any, hidden: frozenset[int] | None) -> Callable[[Sequence[int]], str]:
    """How a request's tokens become text: special tokens left out, except, for a request with
    tools (``hidden`` from ``markup_hidden_ids``), the call markup where the tokenizer has it as
    special tokens (GLM-4.6V's ``<tool_call>``, ``<arg_key>``...), which the calls are read from
    (vLLM's GLM parser keeps all of them)."""
    if hidden is None:
        return lambda ids: str(tokenizer.decode(ids, skip_special_tokens=True))
    return lambda ids: str(tokenizer.decode([i for i in ids if i not in hidden], skip_special_tokens=False))


def markup_hidden_ids(tokenizer: Any) -> frozenset[int] | None:
    """The special token ids but the tool-call markup's; ``None`` when no markup token is special."""
    special = {int(i) for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    special |= {int(i) for i in getattr(tokenizer, "all_special_ids", ())}
    unknown = getattr(tokenizer, "unk_token_id", None)
    markup = {tokenizer.convert_tokens_to_ids(token) for token in TOOL_MARKUP} - {unknown}
    kept = special & {i for i in markup if isinstance(i, int)}
    return frozenset(special - kept) if kept else None


def string_parameters(definitions: str) -> dict[str, frozenset[str]]:
    """For each function in a ``tools`` list (JSON text), the parameters whose values are strings:
    typed ``string``, or an ``enum``/``const`` of strings, through ``$ref``s (as the grammar writes
    them: as text, where other values are JSON)."""
    found: dict[str, frozenset[str]] = {}
    for tool in json.loads(definitions):
        function = tool.get("function") or {}
        schema = function.get("parameters") or {}
        properties = schema.get("properties") if isinstance(schema, dict) else None
        if not isinstance(properties, dict):  # no usable schema: every value is read as JSON
            properties = {}
        found[str(function.get("name"))] = frozenset(
            key for key, spec in properties.items() if _is_string(spec, schema)
        )
    return found


def _is_string(spec: Any, root: Any, depth: int = 0) -> bool:
    if not isinstance(spec, dict) or depth > 8:
        return False
    ref = spec.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = (
                target.get(part.replace("~1", "/").replace("~0", "~")) if isinstance(target, dict) else None
            )
        return _is_string(target, root, depth + 1)
    if spec.get("type") == "string":
        return True
    if "const" in spec:
        return isinstance(spec["const"], str)
    values = spec.get("enum")
    if isinstance(values, list) and values:
        return all(isinstance(value, str) for value in values)
    options = spec.get("anyOf") or spec.get("oneOf")
    return (
        isinstance(options, list) and bool(options) and all(_is_string(o, root, depth + 1) for o in options)
    )


def _held_prefix(text: str, marker: str) -> int:
    """Length of the longest tail of ``text`` that is a proper prefix of ``marker``."""
    for n in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:n]):
            return n
    return 0


class _Call:
    __slots__ = ("id", "name", "sent", "text")

    def __init__(self, call_id: str) -> None:
        self.id = call_id
        self.text = ""  # everything after <tool_call>, up to </tool_call> once it came
        self.name: str | None = None
        self.sent = ""  # the arguments' text sent so far


class ToolCallParser:
    """Reads one answer's calls. Not thread-safe; one per request.

    ``strings``: per function, its string-typed parameters (``string_parameters``).
    ``trim_strings``: the answer was decoded under a tool-call grammar, which allows
    one whitespace character on either side of a value as a separator; it is then not
    part of a string value. ``new_id`` makes call ids (fixed ones in tests).
    """

    def __init__(
        self,
        strings: dict[str, frozenset[str]],
        *,
        trim_strings: bool = False,
        new_id: Callable[[], str] = new_call_id,
    ) -> None:
        self._strings = strings
        self._trim = trim_strings
        self._new_id = new_id
        self._buffer = ""  # text outside calls not yet given out
        self._calls: list[_Call] = []
        self._open: _Call | None = None
        self._space = ""  # whitespace held: content only if text, not a call, follows
        self._in_text = False  # this stretch outside calls has text that is not whitespace

    @property
    def called(self) -> bool:
        """Whether the answer has made at least one call so far."""
        return bool(self._calls)

    def feed(self, text: str) -> tuple[str, tuple[ToolCallDelta, ...]]:
        """The content and the call deltas that ``text`` (the answer's next piece) completes."""
        content: list[str] = []
        deltas: list[ToolCallDelta] = []
        rest = text
        while rest:
            if self._open is not None:
                rest = self._feed_call(self._open, rest, deltas)
                continue
            self._buffer += rest
            rest = ""
            start = self._buffer.find(CALL_START)
            if start < 0:
                keep = _held_prefix(self._buffer, CALL_START)
                content.append(self._content(self._buffer[: len(self._buffer) - keep]))
                self._buffer = self._buffer[len(self._buffer) - keep :]
                break
            content.append(self._content(self._buffer[:start]))
            self._space, self._in_text = "", False  # whitespace alone before a call is not content
            rest = self._buffer[start + len(CALL_START) :]
            self._buffer = ""
            self._open = _Call(self._new_id())
            self._calls.append(self._open)
        return "".join(content), tuple(deltas)

    def finish(self) -> tuple[str, tuple[ToolCallDelta, ...]]:
        """What is left once the answer has ended: held text, and an open call's last arguments."""
        deltas: list[ToolCallDelta] = []
        call = self._open
        if call is not None:  # cut off: send what is complete; its arguments stay unclosed
            self._advance(call, deltas, closed=False)
            return "", tuple(deltas)
        tail = self._content(self._buffer)
        if not self._calls:  # an answer without calls keeps its text exactly, whitespace alone too
            tail += self._space
        self._buffer = self._space = ""
        return tail, ()

    def event(self, event: TokenEvent) -> TokenEvent:
        """``event`` with its text read: the content outside calls, and the calls' deltas."""
        text, deltas = self.feed(event.text)
        if event.finish_reason is not None:
            tail, more = self.finish()
            text, deltas = text + tail, deltas + more
        return dataclasses.replace(event, text=text, tool_calls=deltas)

    def _content(self, text: str) -> str:
        """Text outside calls; a stretch between calls (or before or after them) that is whitespace
        alone is held, as it is no content if a call or the end follows."""
        if self._in_text:
            return text
        if not text.strip(_WHITESPACE):
            self._space += text
            return ""
        self._in_text = True
        out, self._space = self._space + text, ""
        return out

    def _feed_call(self, call: _Call, text: str, deltas: list[ToolCallDelta]) -> str:
        """Add ``text`` to the open call; what follows its end is returned, to be read as content."""
        call.text += text
        end = call.text.find(CALL_END)
        rest = ""
        if end >= 0:
            rest = call.text[end + len(CALL_END) :]
            call.text = call.text[:end]
        self._advance(call, deltas, closed=end >= 0)
        if end >= 0:
            self._open = None
        return rest

    def _advance(self, call: _Call, deltas: list[ToolCallDelta], *, closed: bool) -> None:
        index = self._calls.index(call)
        if call.name is None:
            match = _NAME_END.search(call.text)
            if match is None and not closed:
                return  # the name may not be complete yet
            call.name = (call.text[: match.start()] if match else call.text).strip()
            deltas.append(ToolCallDelta(index, call.id, call.name, ""))
        arguments = self._arguments(call.name, call.text, closed=closed)
        if len(arguments) > len(call.sent):
            deltas.append(ToolCallDelta(index, arguments=arguments[len(call.sent) :]))
            call.sent = arguments

    def _arguments(self, name: str, text: str, *, closed: bool) -> str:
        """The arguments' JSON text from the complete key/value pairs so far; closed with the call."""
        strings = self._strings.get(name, frozenset())
        parts = []
        for key, value in _PAIR.findall(text):
            key = key.strip()
            value_json = json.dumps(self._value(key in strings, value), ensure_ascii=False)
            parts.append(f"{json.dumps(key, ensure_ascii=False)}: {value_json}")
        if not parts:
            return "{}" if closed else ""
        return "{" + ", ".join(parts) + ("}" if closed else "")

    def _value(self, is_string: bool, raw: str) -> Any:
        if is_string:
            if self._trim and raw and raw[0] in _WHITESPACE:
                raw = raw[1:]
            if self._trim and raw and raw[-1] in _WHITESPACE:
                raw = raw[:-1]
            return raw
        try:
            return json.loads(raw)
        except ValueError:
            return raw.strip(_WHITESPACE)  # vLLM's GLM parser reads what is not JSON so too


def collect_tool_calls(deltas: Iterable[ToolCallDelta]) -> tuple[ToolCall, ...]:
    """Whole calls from their streamed pieces (in order), as a non-streamed answer lists them."""
    calls: dict[int, list[str]] = {}
    for delta in deltas:
        call = calls.setdefault(delta.index, ["", "", ""])
        if delta.id is not None:
            call[0] = delta.id
        if delta.name is not None:
            call[1] += delta.name
        call[2] += delta.arguments
    return tuple(ToolCall(*calls[index]) for index in sorted(calls))
