"""The tool-call grammar: what it lets through, what it refuses, and the random tiny model under it."""

from __future__ import annotations

import json
from enum import StrEnum

import pytest
import torch
from pydantic import BaseModel, ConfigDict, Field

from glimpse.engine.batching import generation_eos_ids
from glimpse.engine.grammar import GrammarLogitsProcessor
from glimpse.engine.protocol import ResponseFormat, Tools
from glimpse.engine.tool_calls import ToolCallParser, collect_tool_calls, string_parameters
from glimpse.engine.tool_grammar import check_parameters, structural_tag
from glimpse.errors import InvalidRequest


class Unit(StrEnum):
    c = "celsius"
    f = "fahrenheit"


class WeatherArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=12)  # bounded: the random model closes no free string
    days: int
    unit: Unit


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _tool(name, parameters=None):
    function = {"name": name, "description": f"{name} tool"}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


DEFINITIONS = json.dumps([_tool("get_weather", WeatherArgs.model_json_schema()), _tool("ping")])
ARGS = {"get_weather": WeatherArgs, "ping": Empty}


def _tools(choice="required", function=None, parallel=None):
    return Tools(DEFINITIONS, choice, function, parallel)


def _accepts(grammars, tiny, tools, text):
    """Whether the grammar takes ``text`` and then an end-of-sequence token (a complete answer)."""
    model, processor = tiny
    constraint = grammars.constraint(grammars.compile_structural_tag(structural_tag(tools, None)))
    for token in processor.tokenizer.encode(text, add_special_tokens=False):
        constraint.accept(token)
        if constraint.failed:
            return False
    constraint.accept(min(generation_eos_ids(model.generation_config)))
    return constraint.finished and not constraint.failed


def test_no_grammar_where_the_model_is_free():
    assert structural_tag(_tools("auto"), None) is None
    assert structural_tag(_tools("none"), ResponseFormat("json_object")) is None


def test_a_named_function_is_called_once_and_required_ones_as_parallel_allows():
    named = structural_tag(_tools("function", "ping"), None)["format"]
    assert [tag["begin"] for tag in named["tags"]] == ["<tool_call>ping\n"]
    assert named["stop_after_first"]
    assert not structural_tag(_tools(), None)["format"]["stop_after_first"]
    assert structural_tag(_tools(parallel=False), None)["format"]["stop_after_first"]


def test_a_parameters_schema_xgrammar_cannot_use_is_refused_naming_the_tool():
    tools = Tools(
        json.dumps([_tool("ok"), _tool("bad", {"type": "object", "properties": {"a": {"type": "nonsense"}}})])
    )
    with pytest.raises(InvalidRequest) as err:
        check_parameters(tools)
    assert err.value.param == "tools[1].function.parameters"
    assert "nonsense" in err.value.message
    assert ".cc:" not in err.value.message


CALL = (
    "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris</arg_value>\n"
    "<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n<arg_key>unit</arg_key>\n<arg_value>celsius</arg_value>\n"
    "</tool_call>"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tools", "text", "accepted"),
    [
        (_tools(), CALL, True),  # GLM-4.5/4.6's own layout, line breaks and all
        (_tools(), CALL.replace(">\n<", "><"), True),  # and without them
        (_tools(), CALL + "\n<tool_call>ping\n</tool_call>", True),
        (_tools(parallel=False), CALL + "\n<tool_call>ping\n</tool_call>", False),
        (_tools("function", "ping"), "<tool_call>ping\n</tool_call>", True),
        (_tools("function", "ping"), CALL, False),  # not the named function
        (_tools(), CALL.replace("<arg_value>2<", "<arg_value>two<"), False),  # days is an integer
        (_tools(), CALL.replace("celsius", "kelvin"), False),  # not in the enum
        (
            _tools(),
            CALL.replace("<arg_key>days</arg_key>\n<arg_value>2</arg_value>\n", ""),
            False,
        ),  # required
        (_tools(), "Sure. " + CALL, False),  # the answer is calls, nothing else
        (_tools(), "<tool_call>launch\n</tool_call>", False),  # no such function
    ],
)
def test_the_grammar_takes_well_formed_calls_only(grammars, tiny, tools, text, accepted):
    assert _accepts(grammars, tiny, tools, text) is accepted


def _generate(tiny, grammars, tools, response_format=None, *, sampled=False, seed=1):
    model, processor = tiny
    constraint = grammars.constraint(grammars.compile_structural_tag(structural_tag(tools, response_format)))
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is the weather in Oslo?"}]}]
    text = processor.apply_chat_template(
        messages, tools=json.loads(tools.definitions), add_generation_prompt=True, tokenize=False
    )
    assert "# Tools" in text  # the tools reach the model through its template
    inputs = dict(processor(text=[text], return_tensors="pt"))
    prompt_len = inputs["input_ids"].shape[1]
    options = {"do_sample": True, "temperature": 1.0, "top_k": 0} if sampled else {"do_sample": False}
    torch.manual_seed(seed)
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=200,
            logits_processor=[GrammarLogitsProcessor(constraint, prompt_len)],
            **options,
        )
    answer = out[0, prompt_len:].tolist()
    text = processor.tokenizer.decode(answer, skip_special_tokens=True)
    assert answer[-1] in generation_eos_ids(model.generation_config), (
        text
    )  # ended by the grammar, not the budget
    return text


def _calls(text):
    parser = ToolCallParser(string_parameters(DEFINITIONS), trim_strings=True)
    content, deltas = parser.feed(text)
    tail, more = parser.finish()
    return content + tail, collect_tool_calls(deltas + more)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tools", "sampled", "seed"),
    [
        (_tools(), False, 1),
        # Sampled with several calls allowed, the random model may go on calling past any budget.
        (_tools(parallel=False), True, 1),
        (_tools("function", "get_weather"), False, 1),
        (_tools("function", "get_weather"), True, 4),
    ],
)
def test_the_random_model_under_the_grammar_makes_calls_whose_arguments_validate(
    tiny, grammars, tools, sampled, seed
):
    content, calls = _calls(_generate(tiny, grammars, tools, sampled=sampled, seed=seed))
    assert content == ""
    assert calls
    if tools.choice == "function" or tools.parallel is False:
        assert len(calls) == 1
    for call in calls:
        assert tools.function in (None, call.name)
        ARGS[call.name].model_validate_json(call.arguments)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_auto_with_a_response_format_answers_calls_or_the_json(tiny, grammars, seed):
    fmt = ResponseFormat("json_schema", json.dumps(Empty.model_json_schema()), name="empty")
    tools = _tools("auto", parallel=False)
    content, calls = _calls(_generate(tiny, grammars, tools, fmt, sampled=True, seed=seed))
    if calls:
        assert content == ""
        for call in calls:
            ARGS[call.name].model_validate_json(call.arguments)
    else:
        Empty.model_validate_json(content)
