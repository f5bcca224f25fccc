"""Tool calls through the openai SDK, over HTTP, on the random tiny model.

The random model's calls are meaningless, so these calls are well formed (and their
arguments valid) only because ``tool_choice`` ``required`` or a named function put the
answer under the tool-call grammar. Strings are bounded with ``maxLength``: the random
model closes no free string within these budgets.
"""

from __future__ import annotations

import json
from enum import StrEnum

import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field
from tests.e2e.test_core import _client, _vision_messages
from tests.images import png_bytes


class Unit(StrEnum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class Weather(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=12)
    days: int
    unit: Unit


class Lookup(BaseModel):
    model_config = ConfigDict(extra="forbid")
    words: list[str] = Field(max_length=2)
    exact: bool


ARGS = {"get_weather": Weather, "lookup": Lookup}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"The {name} tool.",
            "parameters": model.model_json_schema(),
        },
    }
    for name, model in ARGS.items()
]


def _messages() -> list[dict]:
    return _vision_messages(png_bytes((80, 60), (30, 160, 90)), "What is the weather where this was taken?")


def _check(calls, expect: str | None = None) -> None:
    assert calls
    for call in calls:
        assert call.type == "function"
        assert call.id.startswith("call_")
        assert expect in (None, call.function.name)
        ARGS[call.function.name].model_validate_json(call.function.arguments)
        assert isinstance(json.loads(call.function.arguments), dict)


@pytest.mark.parametrize("seed", [None, 5])
def test_required_answers_with_calls_whose_arguments_validate(tiny_server, seed):
    sampled = {} if seed is None else {"temperature": 1.0, "seed": seed}
    reply = _client(tiny_server).chat.completions.create(
        model="tiny", messages=_messages(), max_tokens=300, tools=TOOLS, tool_choice="required", **sampled
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls", choice.message
    assert choice.message.content is None
    _check(choice.message.tool_calls)


def test_a_named_function_is_called_once(tiny_server):
    reply = _client(tiny_server).chat.completions.create(
        model="tiny",
        messages=_messages(),
        max_tokens=300,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        temperature=1.0,
        seed=2,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    _check(choice.message.tool_calls, "lookup")


def test_streamed_calls_assemble_into_valid_arguments(tiny_server):
    stream = _client(tiny_server).chat.completions.create(
        model="tiny",
        messages=_messages(),
        max_tokens=300,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
        extra_headers={"Cache-Control": "no-cache"},
    )
    calls: dict[int, dict] = {}
    finish, content = None, ""
    for chunk in stream:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for piece in delta.tool_calls or ():
            call = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
            call["id"] = piece.id or call["id"]
            call["name"] += piece.function.name or ""
            call["arguments"] += piece.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert content == ""
    (call,) = calls.values()
    assert call["id"].startswith("call_")
    assert call["name"] == "get_weather"
    Weather.model_validate_json(call["arguments"])


def test_a_conversation_with_calls_and_tool_results_goes_on(tiny_server):
    """``auto``: the model is free; the history's calls and results render through its template."""
    client = _client(tiny_server)
    first = client.chat.completions.create(
        model="tiny", messages=_messages(), max_tokens=300, tools=TOOLS, tool_choice="required"
    ).choices[0]
    history = [
        *_messages(),
        first.message.model_dump(exclude_none=True),
        *[
            {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"ok": True, "n": i})}
            for i, call in enumerate(first.message.tool_calls)
        ],
    ]
    reply = client.chat.completions.create(model="tiny", messages=history, max_tokens=8, tools=TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert reply.usage.prompt_tokens > 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "launch"}}},
            "tool_choice",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": {"a": {"type": "nope"}}},
                        },
                    }
                ]
            },
            "tools[0].function.parameters",
        ),
    ],
)
def test_bad_tools_are_a_400_naming_the_parameter(tiny_server, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        _client(tiny_server).chat.completions.create(
            model="tiny", messages=_messages(), max_tokens=5, **extra
        )
    assert err.value.status_code == 400
    assert err.value.body["param"] == param
