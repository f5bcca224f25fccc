"""``tools`` over the OpenAI API in-process: what reaches the engine, what is refused, how calls return."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import pytest
from tests.fakes import FakeEngine
from tests.images import data_url

from glimpse.engine.protocol import FinishReason, GenerationRequest, TokenEvent, ToolCall, ToolCallDelta

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@dataclass
class CallingEngine(FakeEngine):
    """Answers with a little text, then one call streamed in three pieces (as the HF engine's parser does)."""

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        self.requests.append(request)
        yield TokenEvent("Checking.", (1,), None, 7, 1)
        yield TokenEvent("", (2,), None, 7, 2, tool_calls=(ToolCallDelta(0, "call_a", "get_weather", ""),))
        yield TokenEvent("", (3,), None, 7, 3, tool_calls=(ToolCallDelta(0, arguments='{"city": "Oslo"'),))
        yield TokenEvent("", (), FinishReason.STOP, 7, 4, tool_calls=(ToolCallDelta(0, arguments="}"),))


def _chat(messages=None, **extra):
    messages = messages or [{"role": "user", "content": "Weather in Oslo?"}]
    return {"model": "fake-model", "messages": messages, "max_tokens": 20, **extra}


async def test_tools_and_a_history_of_calls_reach_the_engine(make_client):
    engine = FakeEngine()
    history = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_url()}},
                {"type": "text", "text": "Weather?"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    async with make_client(engine) as client:
        response = await client.post(
            "/v1/chat/completions",
            json=_chat(
                history,
                tools=[WEATHER],
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                parallel_tool_calls=False,
            ),
        )
    assert response.status_code == 200, response.text
    (request,) = engine.requests
    assert json.loads(request.tools.definitions) == [WEATHER]
    assert (request.tools.choice, request.tools.function, request.tools.parallel) == (
        "function",
        "get_weather",
        False,
    )
    assistant, tool = request.messages[1], request.messages[2]
    assert assistant.tool_calls == (ToolCall("call_1", "get_weather", '{"city": "Oslo"}'),)
    assert (tool.role, tool.tool_call_id, tool.text) == ("tool", "call_1", "sunny")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
        ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools[0].function.name"),
        (
            {
                "tools": [
                    WEATHER,
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}},
                ]
            },
            "tools[1].function.parameters",
        ),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": [1]}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "launch"}}},
            "tool_choice",
        ),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "tools"),
    ],
)
async def test_bad_tools_are_a_400_naming_the_field_before_the_engine(make_client, extra, param):
    engine = FakeEngine()
    async with make_client(engine) as client:
        response = await client.post("/v1/chat/completions", json=_chat(**extra))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert engine.requests == []


@pytest.mark.parametrize(
    ("message", "param"),
    [
        (
            {
                "role": "assistant",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "not json"}}],
            },
            "messages[1].tool_calls[0].function.arguments",
        ),
        (
            {"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "[1]"}}]},
            "messages[1].tool_calls[0].function.arguments",
        ),
        ({"role": "tool", "content": "sunny"}, "messages[1].tool_call_id"),
        (
            {
                "role": "user",
                "content": "x",
                "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{}"}}],
            },
            "messages[1].tool_calls",
        ),
    ],
)
async def test_a_bad_history_is_a_400_naming_the_message(make_client, message, param):
    engine = FakeEngine()
    async with make_client(engine) as client:
        response = await client.post(
            "/v1/chat/completions", json=_chat([{"role": "user", "content": "hi"}, message], tools=[WEATHER])
        )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert engine.requests == []


async def test_choices_that_ask_for_nothing_without_tools_are_accepted(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        for extra in (
            {"tools": []},
            {"tool_choice": "none"},
            {"tool_choice": "auto"},
            {"parallel_tool_calls": True},
        ):
            response = await client.post("/v1/chat/completions", json=_chat(**extra))
            assert response.status_code == 200, (extra, response.text)
    assert all(request.tools is None for request in engine.requests)


async def test_calls_come_back_whole_with_finish_reason_tool_calls_also_from_the_cache(make_client):
    engine = CallingEngine()
    async with make_client(engine) as client:
        first = await client.post("/v1/chat/completions", json=_chat(tools=[WEATHER]))
        again = await client.post("/v1/chat/completions", json=_chat(tools=[WEATHER]))
        other = await client.post("/v1/chat/completions", json=_chat(tools=[WEATHER], tool_choice="required"))
    assert [r.headers["x-glimpse-cache"] for r in (first, again, other)] == ["miss", "hit", "miss"]
    for response in (first, again):
        choice = response.json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls"
        assert choice["message"]["content"] == "Checking."
        assert choice["message"]["tool_calls"] == [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
            }
        ]


async def test_calls_stream_as_openai_deltas(make_client):
    async with make_client(CallingEngine()) as client:
        response = await client.post(
            "/v1/chat/completions",
            json=_chat(tools=[WEATHER], stream=True),
            headers={"Cache-Control": "no-cache"},
        )
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events]
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert calls == [
        [
            {
                "index": 0,
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ],
        [{"index": 0, "function": {"arguments": '{"city": "Oslo"'}}],
        [{"index": 0, "function": {"arguments": "}"}}],
    ]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert "".join(d.get("content") or "" for d in deltas) == "Checking."
