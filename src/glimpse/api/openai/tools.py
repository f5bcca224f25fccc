"""OpenAI's ``tools``, ``tool_choice`` and a history's calls: checked, then handed to the engine.

What OpenAI refuses is refused here too, with a 400 whose ``param`` names the
field at fault, before any image is fetched or token generated: a tool that is
not a function, a function name outside ``^[a-zA-Z0-9_-]{1,64}$`` or used twice,
``parameters`` that are not a JSON schema of an object, a ``tool_choice`` that
names no offered function or forces a call when no tools are offered, an
assistant call whose ``arguments`` are not a JSON object, a ``tool`` message with
no ``tool_call_id``. (Whether a schema can be enforced is the engine's to say: the
in-process one compiles it, an upstream server checks it itself.)

``tool_choice`` ``none`` or ``auto`` with no tools asks for nothing and is accepted,
as before tools were implemented; so is ``parallel_tool_calls`` with no tools.
"""

from __future__ import annotations

import json
import re
from typing import Any

from glimpse.engine.protocol import ToolCall, Tools
from glimpse.errors import InvalidRequest

from .schemas import ChatMessageIn

__all__ = ["MAX_TOOLS", "engine_tool_calls", "engine_tools"]

#: OpenAI's limit on the functions one request may offer.
MAX_TOOLS = 128
_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
_CHOICES = ("auto", "none", "required")


def _function(tool: Any, index: int) -> dict[str, Any]:
    """One checked tool, with only the fields OpenAI defines for a function (in the client's order)."""
    where = f"tools[{index}]"
    if not isinstance(tool, dict) or tool.get("type") != "function":
        raise InvalidRequest(f'{where} must be an object with "type": "function".', param=f"{where}.type")
    function = tool.get("function")
    if not isinstance(function, dict):
        raise InvalidRequest(f"{where}.function must be an object.", param=f"{where}.function")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"{where}.function.name must match ^[a-zA-Z0-9_-]{{1,64}}$; got {json.dumps(name)[:80]}.",
            param=f"{where}.function.name",
        )
    description = function.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest(
            f"{where}.function.description must be a string.", param=f"{where}.function.description"
        )
    parameters = function.get("parameters")
    if parameters is not None and (
        not isinstance(parameters, dict) or parameters.get("type", "object") != "object"
    ):
        raise InvalidRequest(
            f'{where}.function.parameters must be a JSON schema of "type": "object".',
            param=f"{where}.function.parameters",
        )
    strict = function.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise InvalidRequest(f"{where}.function.strict must be a boolean.", param=f"{where}.function.strict")
    known = {"name", "description", "parameters", "strict"}
    return {
        "type": "function",
        "function": {k: v for k, v in function.items() if k in known and v is not None},
    }


def _choice(choice: Any, names: list[str]) -> tuple[Any, str | None]:
    if choice is None:
        return "auto", None
    if isinstance(choice, str) and choice in _CHOICES:
        return choice, None
    if (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
    ):
        name = choice["function"].get("name")
        if isinstance(name, str) and name in names:
            return "function", name
        raise InvalidRequest(
            f"tool_choice names the function {json.dumps(name)[:80]}, which is not among the tools.",
            param="tool_choice",
        )
    raise InvalidRequest(
        'tool_choice must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}.',
        param="tool_choice",
    )


def engine_tools(tools: list[Any] | None, choice: Any, parallel: bool | None) -> Tools | None:
    """The engine's ``Tools`` for a request, or ``None`` when it offers none."""
    if not tools:
        if choice is None or choice in ("none", "auto"):
            return None
        raise InvalidRequest("tool_choice is only allowed when tools are given.", param="tool_choice")
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"At most {MAX_TOOLS} tools may be given; got {len(tools)}.", param="tools")
    checked = [_function(tool, index) for index, tool in enumerate(tools)]
    names = [tool["function"]["name"] for tool in checked]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise InvalidRequest(
                f"tools[{index}].function.name {name!r} is given twice.",
                param=f"tools[{index}].function.name",
            )
    mode, function = _choice(choice, names)
    return Tools(json.dumps(checked, ensure_ascii=False), mode, function, parallel)


def engine_tool_calls(message: ChatMessageIn, index: int) -> tuple[tuple[ToolCall, ...], str | None]:
    """A history message's calls and the call it answers, checked."""
    where = f"messages[{index}]"
    if message.tool_calls and message.role != "assistant":
        raise InvalidRequest(
            f"{where} has tool_calls, which only assistant messages may.", param=f"{where}.tool_calls"
        )
    if message.role == "tool" and not message.tool_call_id:
        raise InvalidRequest(
            f"{where} is a tool message without a tool_call_id.", param=f"{where}.tool_call_id"
        )
    calls = []
    for number, call in enumerate(message.tool_calls or ()):
        try:
            arguments = json.loads(call.function.arguments)
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            param = f"{where}.tool_calls[{number}].function.arguments"
            raise InvalidRequest(f"{param} must be a JSON object, as text.", param=param)
        calls.append(ToolCall(call.id, call.function.name, json.dumps(arguments, ensure_ascii=False)))
    return tuple(calls), message.tool_call_id if message.role == "tool" else None
