"""The one reading of OpenAI stream chunks and ``Retry-After`` that the engine and the clients share."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from glimpse.openai_wire import MalformedChunk, StreamChunk, error_text, parse_chunk, parse_retry_after


def test_a_chunk_keeps_answer_reasoning_finish_and_usage_apart():
    event = {
        "choices": [{"delta": {"content": "yes", "reasoning_content": "hm"}, "finish_reason": "tool_calls"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2},
    }
    assert parse_chunk(json.dumps(event)) == StreamChunk(
        text="yes", reasoning="hm", finish_reason="tool_calls", usage=(7, 2)
    )


def test_a_role_only_chunk_is_empty():
    assert (
        parse_chunk('{"choices": [{"delta": {"role": "assistant"}, "finish_reason": null}]}') == StreamChunk()
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ('{"error": {"message": "CUDA out of memory", "code": 500}}', "CUDA out of memory"),
        ('{"object": "error", "message": "engine died"}', "engine died"),
        ('{"error": "plain words"}', "plain words"),
        ('{"error": {}}', "unknown error"),
    ],
)
def test_error_events_carry_the_servers_words(data, message):
    assert parse_chunk(data) == StreamChunk(error=message)


@pytest.mark.parametrize("data", ["not json", "[1, 2]", '{"usage": {"prompt_tokens": "x"}}', "[" * 100_000])
def test_what_is_no_chunk_is_malformed(data):
    with pytest.raises(MalformedChunk):
        parse_chunk(data)


def test_error_text_reads_the_common_body_shapes_and_is_bounded():
    assert error_text({"error": {"message": "no"}}) == "no"
    assert error_text({"detail": "Not Found"}) == "Not Found"
    assert error_text({"error": "x" * 10_000}) == "x" * 500
    assert error_text(["not", "a", "dict"]) == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("007", 7.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("-2", None),  # not delta-seconds: the caller falls back to its own back-off
        ("²", None),  # str.isdigit() says yes; float() refuses it
        ("1e3", None),
    ],
)
def test_retry_after_delta_seconds(value, expected):
    assert parse_retry_after(value) == expected


def test_retry_after_a_huge_number_is_infinite_not_an_int_of_thousands_of_digits():
    assert parse_retry_after("9" * 5000) == math.inf


def test_retry_after_an_http_date_counts_from_now_and_a_past_one_is_zero():
    when = datetime(2030, 1, 1, 0, 0, 10, tzinfo=UTC)
    header = format_datetime(when, usegmt=True)
    assert parse_retry_after(header, now=when.timestamp() - 10) == pytest.approx(10)
    assert parse_retry_after(header, now=when.timestamp() + 10) == 0.0


def test_tool_call_deltas_are_read_and_odd_items_skipped():
    delta = {
        "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": ""}},
            {"index": 0, "function": {"arguments": '{"a": 1}'}},
            "junk",
            {"function": "junk"},
        ]
    }
    chunk = parse_chunk(json.dumps({"choices": [{"delta": delta}]}))
    assert chunk.tool_calls == ((0, "call_1", "f", ""), (0, None, None, '{"a": 1}'), (3, None, None, ""))
