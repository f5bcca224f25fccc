"""The clients agents are built with, over HTTP: instructor, LangChain, the OpenAI Agents SDK, LiteLLM.

On the random tiny model (``tiny_server``) an answer is valid only because the grammar
made it so, whatever the sample; on the trained one (``seeing_server``) each client's
extraction from an image is valid and its plain question about the image is answered
right. The openai SDK's own ``logprobs`` and ``n`` are in ``test_logprobs_and_choices.py``.

No client may reach the network: each library's own switches keep it local (LiteLLM's
model cost map, the Agents SDK's and LangSmith's tracing), and a guard fails any test
in which one still looks up a host other than this machine.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterator
from enum import StrEnum
from typing import Annotated, Any, Literal

import instructor
import openai
import pytest
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, RunConfig, Runner, Tool, function_tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ConfigDict, Field
from tests.e2e.harness import GlimpseServer
from tests.e2e.seeing import data, data_url, picture, user
from tests.e2e.test_core import _client
from tests.images import png_bytes
from tokenizers import Tokenizer

from glimpse.engine.tiny_task import COLORS, SHAPES, grade

#: The libraries' own switches that keep them off the network.
OFFLINE = {
    # LiteLLM fetches its model cost map from GitHub when imported, unless told to use its copy.
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    # ... and the other catalogs and tokenizers it would fetch by itself.
    "LITELLM_OFFLINE_MODE": "true",
    # The Agents SDK exports traces to OpenAI's platform by default (each run also turns it off).
    "OPENAI_AGENTS_DISABLE_TRACING": "true",
    "LANGSMITH_TRACING": "false",
    "LANGCHAIN_TRACING_V2": "false",
}
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class Sighting(BaseModel):
    """What the random model "saw". Every field is bounded (it closes no free string within these
    budgets); the label by a ``pattern``, because xgrammar turns ``maxLength`` into a rule that
    lets raw control characters into the string (``test_a_length_bounded_string_...`` below)."""

    model_config = ConfigDict(extra="forbid")
    label: str = Field(pattern=r"^[A-Za-z ]{1,12}$")
    count: int = Field(ge=0, le=20)
    colour: Literal["red", "green", "blue"]
    round: bool


class Tally(BaseModel):
    """A tool's arguments: two are enough, as each costs the random model ~50 tokens of call syntax."""

    model_config = ConfigDict(extra="forbid")
    colour: Literal["red", "green", "blue"]
    count: int = Field(ge=0, le=20)


#: The trained model's vocabulary words as its tokenizer spells them after "It is": with their
#: leading space (" red" is one token). A bare "red" is "re" + "d", pieces it never learned to
#: write: on 48 pictures an enum of bare words got 5-7 colours right, this one 48.
SeenColor = StrEnum("SeenColor", {name: f" {name}" for name in COLORS})
SeenShape = StrEnum("SeenShape", {name: f" {name}" for name in SHAPES})


class Seen(BaseModel):
    color: SeenColor
    shape: SeenShape


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "record_tally",
            "description": "Record how many shapes of which colour the image shows.",
            "parameters": Tally.model_json_schema(),
        },
    }
]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The libraries' offline switches on, and every host lookup but loopback refused and noted."""
    for name, value in OFFLINE.items():
        monkeypatch.setenv(name, value)
    looked_up: list[str] = []
    resolve = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in _LOOPBACK:
            looked_up.append(name)
            raise socket.gaierror(socket.EAI_NONAME, f"{name}: this test runs offline")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    yield
    assert not looked_up, f"a client reached for the network: {looked_up}"


def _random_messages() -> list[dict[str, Any]]:
    return [user("Describe it.", png_bytes((80, 60), (30, 160, 90)))]


def _agent_input(question: str, raw: bytes) -> list[Any]:
    """A user turn in the Agents SDK's input format, which its chat-completions model converts."""
    parts = [
        {"type": "input_image", "image_url": data_url(raw), "detail": "auto"},
        {"type": "input_text", "text": question},
    ]
    return [{"role": "user", "content": parts}]


def _run_agent(server: GlimpseServer, items: list[Any], **agent: Any) -> Any:
    """``Runner.run`` on chat completions (Glimpse serves no Responses API); the final output."""

    async def run() -> Any:
        async with openai.AsyncOpenAI(
            base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120
        ) as client:
            model = OpenAIChatCompletionsModel(model="tiny", openai_client=client)
            result = await Runner.run(
                Agent(name="looker", model=model, **agent), items, run_config=RunConfig(tracing_disabled=True)
            )
            return result.final_output

    return asyncio.run(run())


def _chat_openai(server: GlimpseServer, **settings: Any) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=f"{server.base_url}/v1",
        api_key="unused",
        model="tiny",
        max_retries=0,
        timeout=120,
        **settings,
    )


def _litellm() -> Any:
    """LiteLLM, imported only now: it reads its offline switches when imported."""
    import litellm

    return litellm


# The random model: valid by construction.


@pytest.mark.parametrize("mode", [instructor.Mode.JSON_SCHEMA, instructor.Mode.TOOLS])
def test_instructor_extracts_a_model_from_an_image(tiny_server, mode):
    # JSON_SCHEMA sends response_format; TOOLS a function named in tool_choice.
    client = instructor.from_openai(_client(tiny_server), mode=mode)
    sighting = client.chat.completions.create(
        model="tiny", messages=_random_messages(), response_model=Sighting, max_tokens=400, max_retries=0
    )
    assert isinstance(sighting, Sighting)


def test_a_length_bounded_string_stays_json_when_a_control_character_is_likely(tiny_server, tiny_model_dir):
    class Note(BaseModel):
        text: str = Field(max_length=8)

    (control,) = (
        Tokenizer.from_file(str(tiny_model_dir / "tokenizer.json"))
        .encode("\x10", add_special_tokens=False)
        .ids
    )
    client = instructor.from_openai(_client(tiny_server), mode=instructor.Mode.JSON_SCHEMA)
    note = client.chat.completions.create(
        model="tiny",
        messages=_random_messages(),
        response_model=Note,
        max_tokens=40,
        max_retries=0,
        logit_bias={str(control): 100},  # where the grammar allows that character, it is the answer
    )
    assert isinstance(note, Note)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_with_structured_output(tiny_server, method):
    # function_calling names the function in tool_choice and sends parallel_tool_calls false.
    structured = _chat_openai(tiny_server, max_tokens=400).with_structured_output(Sighting, method=method)
    assert isinstance(structured.invoke(_random_messages()), Sighting)


def test_agents_sdk_output_type(tiny_server):
    output = _run_agent(
        tiny_server,
        _agent_input("Describe it.", png_bytes((80, 60), (30, 160, 90))),
        output_type=Sighting,
        model_settings=ModelSettings(max_tokens=400),
    )
    assert isinstance(output, Sighting)


def test_agents_sdk_calls_a_function_tool(tiny_server):
    calls: list[Tally] = []

    @function_tool
    def record_tally(
        colour: Literal["red", "green", "blue"], count: Annotated[int, Field(ge=0, le=20)]
    ) -> str:
        """Record how many shapes of which colour the image shows."""
        calls.append(Tally(colour=colour, count=count))
        return f"recorded {count} {colour}"

    tools: list[Tool] = [record_tally]
    output = _run_agent(
        tiny_server,
        _agent_input("Count the shapes.", png_bytes((80, 60), (30, 160, 90))),
        tools=tools,
        tool_use_behavior="stop_on_first_tool",
        model_settings=ModelSettings(max_tokens=400, tool_choice="required", parallel_tool_calls=False),
    )
    # The SDK parsed the arguments and ran the tool; its result is the run's output.
    (tally,) = calls
    assert output == f"recorded {tally.count} {tally.colour}"


@pytest.mark.parametrize(
    "choice",
    ["required", {"type": "function", "function": {"name": "record_tally"}}],
    ids=["required", "named"],
)
def test_litellm_passes_tools_through(tiny_server, choice):
    reply = _litellm().completion(
        model="openai/tiny",
        api_base=f"{tiny_server.base_url}/v1",
        api_key="unused",
        messages=_random_messages(),
        max_tokens=400,
        tools=TOOLS,
        tool_choice=choice,
        parallel_tool_calls=False,
        num_retries=0,
    )
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls", message
    (call,) = message.tool_calls
    assert call.function.name == "record_tally"
    Tally.model_validate(json.loads(call.function.arguments))


def test_litellm_passes_a_response_format_through(tiny_server):
    reply = _litellm().completion(
        model="openai/tiny",
        api_base=f"{tiny_server.base_url}/v1",
        api_key="unused",
        messages=_random_messages(),
        max_tokens=400,
        response_format=Sighting,
        num_retries=0,
    )
    Sighting.model_validate_json(reply.choices[0].message.content)


# The trained model through each client: the structured extraction is valid against the schema,
# and the same client's plain question about the picture gets the right colour (the model answers
# colour questions right 100 % of the time). The extraction's own values are not graded: the model
# never saw JSON, so which word it picks inside the grammar is its guess (the previous checkpoint
# happened to pick the right colour 48 of 48 times; the current one, for the three pictures below,
# only for the green one, with every client, while it answers the plain question right).


def _instructor_seen(server: GlimpseServer, raw: bytes) -> Seen:
    client = instructor.from_openai(_client(server), mode=instructor.Mode.JSON_SCHEMA)
    messages: Any = [user("Describe the image.", raw)]
    return client.chat.completions.create(
        model="tiny", messages=messages, response_model=Seen, max_tokens=40, temperature=0, max_retries=0
    )


def _instructor_said(server: GlimpseServer, raw: bytes, question: str) -> str:
    client = instructor.from_openai(_client(server), mode=instructor.Mode.JSON_SCHEMA)
    messages: Any = [user(question, raw)]
    reply = client.chat.completions.create(
        model="tiny", messages=messages, response_model=None, max_tokens=24, temperature=0, max_retries=0
    )
    return str(reply.choices[0].message.content)


def _langchain_seen(server: GlimpseServer, raw: bytes) -> Seen:
    structured = _chat_openai(server, max_tokens=40, temperature=0).with_structured_output(
        Seen, method="json_schema"
    )
    seen = structured.invoke([user("Describe the image.", raw)])
    assert isinstance(seen, Seen)
    return seen


def _langchain_said(server: GlimpseServer, raw: bytes, question: str) -> str:
    return str(_chat_openai(server, max_tokens=24, temperature=0).invoke([user(question, raw)]).content)


def _agents_seen(server: GlimpseServer, raw: bytes) -> Seen:
    seen = _run_agent(
        server,
        _agent_input("Describe the image.", raw),
        output_type=Seen,
        model_settings=ModelSettings(max_tokens=40, temperature=0),
    )
    assert isinstance(seen, Seen)
    return seen


def _agents_said(server: GlimpseServer, raw: bytes, question: str) -> str:
    said = _run_agent(
        server, _agent_input(question, raw), model_settings=ModelSettings(max_tokens=24, temperature=0)
    )
    return str(said)


@pytest.mark.parametrize(
    ("extract", "ask"),
    [(_instructor_seen, _instructor_said), (_langchain_seen, _langchain_said), (_agents_seen, _agents_said)],
    ids=["instructor", "langchain", "agents"],
)
@pytest.mark.parametrize(("color", "shape"), [("red", "circle"), ("green", "square"), ("blue", "triangle")])
def test_each_client_extracts_from_an_image_and_its_question_about_it_is_answered_right(
    seeing_server, extract, ask, color, shape
):
    shown = picture(color, shape, size=(200, 150))
    raw = data(shown)
    seen = extract(seeing_server, raw)
    assert seen.color.strip() in COLORS
    assert seen.shape.strip() in SHAPES
    said = ask(seeing_server, raw, "What color is the shape?")
    assert grade(shown, "color", "en", said), said
