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
