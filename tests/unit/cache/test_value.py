import dataclasses
import json

import pytest

from glimpse.cache import CachedResult

RESULT = CachedResult(
    text="Un chat 🐱.",
    chunks=("Un", " chat", " 🐱."),
    finish_reason="stop",
    prompt_tokens=12,
    completion_tokens=3,
)


def test_round_trip():
    assert CachedResult.from_bytes(RESULT.to_bytes()) == RESULT


def test_tool_calls_round_trip_and_entries_without_them_read_as_before():
    called = dataclasses.replace(RESULT, tool_calls=(("call_1", "f", '{"a": 1}'), ("call_2", "g", "{}")))
    assert CachedResult.from_bytes(called.to_bytes()) == called
    assert "tool_calls" not in json.loads(RESULT.to_bytes())
    for bad in (["x"], [["a", "b"]], [["a", "b", 3]], "abc"):
        data = json.dumps({**json.loads(called.to_bytes()), "tool_calls": bad}).encode()
        with pytest.raises(ValueError, match="tool calls"):
            CachedResult.from_bytes(data)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe",
        b"not json",
        b"[]",
        b'{"f": 999}',
        json.dumps({**json.loads(RESULT.to_bytes()), "chunks": "abc"}).encode(),
        json.dumps({**json.loads(RESULT.to_bytes()), "chunks": [1]}).encode(),
        json.dumps({**json.loads(RESULT.to_bytes()), "prompt_tokens": -1}).encode(),
        json.dumps({**json.loads(RESULT.to_bytes()), "completion_tokens": True}).encode(),
        json.dumps({k: v for k, v in json.loads(RESULT.to_bytes()).items() if k != "text"}).encode(),
    ],
)
def test_foreign_or_damaged_values_are_refused(data):
    with pytest.raises(ValueError, match="cached value"):
        CachedResult.from_bytes(data)
