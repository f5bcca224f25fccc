"""The grammar of forced tool calls: GLM-4.x's call markup, arguments following each function's schema.

With ``tool_choice`` ``required`` or a named function the answer must be calls, so
it is decoded under a grammar (an xgrammar structural tag) that allows nothing
else: ``<tool_call>NAME`` and a line break, then the arguments as GLM writes them
(``<arg_key>k</arg_key><arg_value>v</arg_value>``, xgrammar's ``glm_xml`` style:
strings as text, other values as JSON, all checked against the function's
``parameters`` schema, one whitespace character allowed between the parts, as the
GLM-4.5/4.6 format puts a line break there), then ``</tool_call>``; calls are
separated by a line break. ``required`` allows any of the functions, several
unless ``parallel_tool_calls`` is false; a named function is called exactly once.
Every schema is enforced, ``strict`` or not, as ``response_format``'s are.

With ``auto`` and a ``response_format``, the answer is either calls or the JSON
the format asks for (what the OpenAI Agents SDK sends with a function tool and an
``output_type``); with ``auto`` alone the model is free, and its calls are parsed.

The markers are matched as text (xgrammar can bind them to their own tokens, with
``token_markers`` in its built-in GLM-4.7 tags, but not inside ``glm_xml`` arguments).
GLM-4.6V's tokenizer has them as tokens of their own; how xgrammar masks those there
is untested here, where only the tiny models (markers as plain text) run.
"""

from __future__ import annotations

import json
import re
from typing import Any

from glimpse.engine.grammar import enforceable_schema
from glimpse.engine.protocol import ResponseFormat, Tools
from glimpse.engine.tool_calls import CALL_END, CALL_START
from glimpse.errors import InvalidRequest

__all__ = ["check_parameters", "function_schemas", "structural_tag"]

#: Whitespace allowed between a call's parts (GLM-4.5/4.6 put one line break there).
_SEPARATOR_WHITESPACE = 1
#: xgrammar's messages start with a timestamp and a source location, and may carry a check's text.
_LOCATION = re.compile(r"^\[[0-9:]+\] \S+:\d+: (?:Check failed: .*? is false: )?")
_MAX_REASON = 300


def function_schemas(tools: Tools) -> list[tuple[str, dict[str, Any]]]:
    """``(name, parameters schema)`` per function; no ``parameters`` is OpenAI's "no arguments"."""
    found = []
    for tool in json.loads(tools.definitions):
        function = tool["function"]
        parameters = function.get("parameters")
        found.append((function["name"], parameters if parameters is not None else _NO_ARGUMENTS))
    return found


_NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}


def _reason(exc: Exception) -> str:
    return _LOCATION.sub("", str(exc).strip())[:_MAX_REASON]


def check_parameters(tools: Tools) -> None:
    """Refuse (``InvalidRequest`` naming the tool) a ``parameters`` schema xgrammar cannot use.

    Tokenizer-free and quick: it runs for every request with tools, also where no grammar
    is compiled (``auto``), so a bad schema is refused before generation whatever the choice.
    """
    import xgrammar

    for index, (_, schema) in enumerate(function_schemas(tools)):
        try:
            xgrammar.Grammar.from_json_schema(json.dumps(schema), any_whitespace=False)
        except (RuntimeError, ValueError) as exc:
            param = f"tools[{index}].function.parameters"
            raise InvalidRequest(
                f"{param} is not a JSON schema this server can use: {_reason(exc)}", param=param
            ) from exc


def _call(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    content = {
        "type": "json_schema",
        "json_schema": schema,
        "style": "glm_xml",
        "max_whitespace_cnt": _SEPARATOR_WHITESPACE,
    }
    return {"type": "tag", "begin": f"{CALL_START}{name}\n", "content": content, "end": CALL_END}


def structural_tag(tools: Tools, response_format: ResponseFormat | None) -> dict[str, Any] | None:
    """The structural tag (JSON form) an answer must follow, or ``None`` where it is free (``auto``
    without a ``response_format``; or ``none``, where ``response_format`` alone applies)."""
    if not tools.active:
        return None
    functions = function_schemas(tools)
    if tools.choice == "function":
        functions = [f for f in functions if f[0] == tools.function]
    elif not tools.forced and response_format is None:
        return None
    calls = {
        "type": "tags_with_separator",
        "tags": [_call(name, schema) for name, schema in functions],
        "separator": "\n",
        "at_least_one": True,
        "stop_after_first": tools.choice == "function" or tools.parallel is False,
    }
    if tools.forced or response_format is None:
        return {"type": "structural_tag", "format": calls}
    schema: Any = {"type": "object"}
    if response_format.type == "json_schema" and response_format.schema is not None:
        schema = enforceable_schema(response_format)
    answer = {"type": "json_schema", "json_schema": schema, "style": "json", "max_whitespace_cnt": 1}
    return {"type": "structural_tag", "format": {"type": "or", "elements": [calls, answer]}}
