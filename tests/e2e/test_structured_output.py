"""Structured output and refused parameters through the openai SDK, over HTTP, on the random tiny model.

The random model's answers are meaningless, so these answers are valid only because
the grammar made them so. Its strings never close on their own within the token
budgets here (measured), so the schemas bound them with ``maxLength``.
"""

from __future__ import annotations

import json
from enum import StrEnum

import openai
import pytest
from pydantic import BaseModel, ConfigDict, Field
from tests.e2e.test_core import _client, _vision_messages
from tests.images import png_bytes


class Colour(StrEnum):
    red = "red"
    green = "green"
    blue = "blue"


class Thing(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(max_length=10)
    count: int
    colour: Colour


class Things(BaseModel):
    model_config = ConfigDict(extra="forbid")
    colours: list[Colour] = Field(max_length=4)
    sizes: list[int] = Field(max_length=3)


def _schema_format(model: type[BaseModel]) -> dict:
    schema = model.model_json_schema()
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": schema, "strict": True}}


def _messages() -> list[dict]:
    return _vision_messages(png_bytes((80, 60), (30, 160, 90)), "Describe it as JSON.")


@pytest.mark.parametrize("model", [Thing, Things])
def test_json_schema_answers_validate(tiny_server, model):
    client = _client(tiny_server)
    reply = client.chat.completions.create(
        model="tiny", messages=_messages(), max_tokens=300, response_format=_schema_format(model)
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    model.model_validate_json(choice.message.content)


def test_streamed_json_schema_answer_validates(tiny_server):
    client = _client(tiny_server)
    stream = client.chat.completions.create(
        model="tiny",
        messages=_messages(),
        max_tokens=300,
        response_format=_schema_format(Thing),
        stream=True,
        extra_headers={"Cache-Control": "no-cache"},
    )
    parts, finish = [], None
    for chunk in stream:
        if chunk.choices:
            parts.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "stop"
    Thing.model_validate_json("".join(parts))


def test_json_object_answer_is_an_object(tiny_server):
    client = _client(tiny_server)
    reply = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Reply in JSON."}],
        max_tokens=300,
        temperature=0.7,
        seed=3,
        response_format={"type": "json_object"},
    )
    choice = reply.choices[0]
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.message.content), dict)
    else:  # the random model may nest deeper than the budget: then a cut-off object
        assert choice.finish_reason == "length"
        assert choice.message.content.startswith("{")


def test_sdk_parse_with_a_pydantic_model(tiny_server):
    client = _client(tiny_server)
    reply = client.chat.completions.parse(
        model="tiny", messages=_messages(), max_tokens=300, response_format=Thing
    )
    parsed = reply.choices[0].message.parsed
    assert isinstance(parsed, Thing)


def test_too_few_tokens_end_with_length_and_a_cut_off_answer(tiny_server):
    reply = _client(tiny_server).chat.completions.create(
        model="tiny", messages=_messages(), max_tokens=4, response_format=_schema_format(Thing)
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "length"
    assert reply.usage.completion_tokens == 4
    with pytest.raises(ValueError, match="JSON"):
        Thing.model_validate_json(choice.message.content)


@pytest.mark.parametrize("stream", [False, True])
def test_an_unusable_schema_is_a_400_naming_response_format(tiny_server, stream):
    bad = {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}}
    with pytest.raises(openai.BadRequestError) as err:
        _client(tiny_server).chat.completions.create(
            model="tiny", messages=_messages(), max_tokens=20, response_format=bad, stream=stream
        )
    # A 400 status, also for a stream: refused before its first token.
    assert err.value.status_code == 400
    assert err.value.body["param"] == "response_format"
    assert "nonsense" in err.value.body["message"]


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions"),
        ({"ignore_eos": True, "response_format": {"type": "json_object"}}, "ignore_eos"),
    ],
)
def test_unsupported_parameters_are_refused_by_name(tiny_server, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        _client(tiny_server).chat.completions.create(
            model="tiny", messages=_messages(), max_tokens=5, extra_body=extra
        )
    assert err.value.body["param"] == param


def test_harmless_parameters_are_accepted(tiny_server):
    reply = _client(tiny_server).chat.completions.create(
        model="tiny",
        messages=_messages(),
        max_tokens=3,
        user="someone",
        metadata={"job": "x"},
        store=False,
        n=1,
        logprobs=False,
        extra_body={"tools": []},
    )
    assert reply.choices[0].message.content is not None


def test_legacy_completions_point_to_chat_completions(tiny_server):
    with pytest.raises(openai.NotFoundError) as err:
        _client(tiny_server).completions.create(model="tiny", prompt="hi", max_tokens=3)
    assert "/v1/chat/completions" in err.value.body["message"]
