"""GLM-4.x call markup read into OpenAI tool calls: whole, and streamed in pieces cut anywhere."""

from __future__ import annotations

import itertools
import json

import pytest

from glimpse.engine.protocol import FinishReason, TokenEvent, ToolCall, ToolCallDelta
from glimpse.engine.tool_calls import ToolCallParser, collect_tool_calls, new_call_id, string_parameters

TOOLS = json.dumps(
    [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "code": {}},
                },
            },
        },
        {"type": "function", "function": {"name": "noop"}},
    ]
)
STRINGS = string_parameters(TOOLS)

# As GLM-4.5/4.6/4.6V write it (their templates render a history's calls so).
ANSWER = (
    "Let me check.\n"
    "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Paris 巴黎</arg_value>\n"
    "<arg_key>days</arg_key>\n<arg_value>3</arg_value>\n</tool_call>\n"
    "<tool_call>noop\n</tool_call>"
)
CALLS = (
    ToolCall("call_0", "get_weather", '{"city": "Paris 巴黎", "days": 3}'),
    ToolCall("call_1", "noop", "{}"),
)


def _parse(pieces, *, trim=False):
    counter = itertools.count()
    parser = ToolCallParser(STRINGS, trim_strings=trim, new_id=lambda: f"call_{next(counter)}")
    content, deltas = [], []
    for piece in pieces:
        text, more = parser.feed(piece)
        content.append(text)
        deltas.extend(more)
    text, more = parser.finish()
    content.append(text)
    deltas.extend(more)
    return "".join(content), deltas


def test_string_valued_parameters_are_found_through_refs_enums_and_unions():
    schema = {
        "type": "object",
        "properties": {
            "unit": {"$ref": "#/$defs/Unit"},
            "mode": {"enum": ["a", "b"]},
            "n": {"enum": [1, "b"]},
            "k": {"const": "x"},
            "either": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/Unit"}]},
            "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "loop": {"$ref": "#/$defs/Loop"},
        },
        "$defs": {"Unit": {"type": "string", "enum": ["c", "f"]}, "Loop": {"$ref": "#/$defs/Loop"}},
    }
    found = string_parameters(
        json.dumps([{"type": "function", "function": {"name": "f", "parameters": schema}}])
    )
    assert found == {"f": frozenset({"unit", "mode", "k", "either"})}


def test_string_parameters_come_from_the_schemas():
    assert string_parameters(TOOLS) == {"get_weather": frozenset({"city"}), "noop": frozenset()}


def test_a_whole_answer_gives_its_text_and_calls():
    content, deltas = _parse([ANSWER])
    assert content == "Let me check.\n"
    assert collect_tool_calls(deltas) == CALLS


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11, 13])
def test_pieces_of_any_size_give_the_same_text_and_calls(size):
    pieces = [ANSWER[i : i + size] for i in range(0, len(ANSWER), size)]
    content, deltas = _parse(pieces)
    assert content == "Let me check.\n"
    assert collect_tool_calls(deltas) == CALLS


@pytest.mark.parametrize(
    "cut",
    [
        "<",
        "<tool",
        "<tool_call",
        "<tool_call>get",
        "<tool_call>get_weather",
        "</arg_val",
        "</tool_c",
        "3</arg_value>\n",
    ],
)
def test_a_cut_inside_a_marker_or_a_name_changes_nothing(cut):
    at = ANSWER.index(cut) + len(cut)
    content, deltas = _parse([ANSWER[:at], ANSWER[at:]])
    assert content == "Let me check.\n"
    assert collect_tool_calls(deltas) == CALLS


def test_streamed_arguments_grow_one_whole_argument_at_a_time():
    _, deltas = _parse(list(ANSWER))
    assert deltas == [
        ToolCallDelta(0, "call_0", "get_weather", ""),
        ToolCallDelta(0, arguments='{"city": "Paris 巴黎"'),
        ToolCallDelta(0, arguments=', "days": 3'),
        ToolCallDelta(0, arguments="}"),
        ToolCallDelta(1, "call_1", "noop", ""),
        ToolCallDelta(1, arguments="{}"),
    ]


def test_text_that_could_start_a_call_is_held_back_until_it_cannot():
    parser = ToolCallParser(STRINGS)
    assert parser.feed("a <tool") == ("a ", ())
    assert parser.feed("box> b") == ("<toolbox> b", ())
    assert parser.finish() == ("", ())


def test_an_answer_without_calls_keeps_its_text_exactly():
    text = "  no calls here:\n <tool_c is not a call \n\n"
    assert _parse(list(text)) == (text, [])


def test_text_around_calls_is_content_and_whitespace_alone_is_not():
    content, deltas = _parse(["Hi <tool_call>noop\n</tool_call>\n  Done. \n"])
    assert content == "Hi \n  Done. \n"
    assert collect_tool_calls(deltas) == (ToolCall("call_0", "noop", "{}"),)


def test_values_are_text_for_string_parameters_and_json_otherwise():
    answer = (
        "<tool_call>get_weather\n<arg_key>city</arg_key><arg_value>42</arg_value>"
        '<arg_key>days</arg_key><arg_value>[1, {"a": null}]</arg_value>'
        "<arg_key>code</arg_key><arg_value>not json</arg_value></tool_call>"
    )
    (call,) = collect_tool_calls(_parse([answer])[1])
    assert json.loads(call.arguments) == {"city": "42", "days": [1, {"a": None}], "code": "not json"}
    (call,) = collect_tool_calls(_parse([answer.replace(">not json<", ">\n  not json \n<")])[1])
    assert json.loads(call.arguments)["code"] == "not json"  # read as vLLM reads it: stripped


def test_an_unknown_function_is_parsed_all_the_same():
    (call,) = collect_tool_calls(
        _parse(["<tool_call>other\n<arg_key>x</arg_key><arg_value>1</arg_value></tool_call>"])[1]
    )
    assert (call.name, json.loads(call.arguments)) == ("other", {"x": 1})


def test_a_name_may_end_at_the_first_argument_as_glm_4_7_writes_it():
    (call,) = collect_tool_calls(
        _parse(["<tool_call>noop<arg_key>a</arg_key><arg_value>1</arg_value></tool_call>"])[1]
    )
    assert (call.name, call.arguments) == ("noop", '{"a": 1}')


def test_under_a_grammar_the_separator_around_a_string_value_is_not_part_of_it():
    answer = "<tool_call>get_weather\n<arg_key>city</arg_key><arg_value> Oslo\n</arg_value></tool_call>"
    assert json.loads(collect_tool_calls(_parse([answer], trim=True)[1])[0].arguments) == {"city": "Oslo"}
    # Without a grammar, a string is kept as written (vLLM's GLM parser keeps it too).
    assert json.loads(collect_tool_calls(_parse([answer])[1])[0].arguments) == {"city": " Oslo\n"}


def test_a_call_cut_off_keeps_its_complete_arguments_and_stays_open():
    cut = ANSWER[: ANSWER.index("<arg_key>days")]
    content, deltas = _parse([cut])
    assert content == "Let me check.\n"
    assert collect_tool_calls(deltas) == (ToolCall("call_0", "get_weather", '{"city": "Paris 巴黎"'),)


def test_event_turns_text_into_content_and_deltas_and_flushes_at_the_end():
    parser = ToolCallParser(STRINGS, new_id=lambda: "call_x")
    first = parser.event(TokenEvent("ok <tool_call>noop", (5,), None, 3, 1))
    assert (first.text, first.tool_calls, first.token_ids) == ("ok ", (), (5,))
    last = parser.event(TokenEvent("\n</tool_call>", (6,), FinishReason.STOP, 3, 2))
    assert last.text == ""
    assert last.tool_calls == (ToolCallDelta(0, "call_x", "noop", ""), ToolCallDelta(0, arguments="{}"))
    assert last.finish_reason is FinishReason.STOP
    assert parser.called


def test_call_ids_are_openai_shaped_and_fresh():
    ids = {new_call_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(i.startswith("call_") and len(i) == 29 for i in ids)
