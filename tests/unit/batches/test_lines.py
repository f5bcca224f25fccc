"""Reading a batch's input file: each bad line answered with its reason, a wholly bad file refused."""

from __future__ import annotations

import json

import pytest

from glimpse.batches import parse_input
from glimpse.errors import InvalidRequest, ModelNotFound

URL = "/v1/chat/completions"


def _check(body):
    if body.get("model") not in (None, "tiny"):
        raise ModelNotFound(f"no model {body['model']!r}")
    if not body.get("messages"):
        raise InvalidRequest("messages must not be empty")


def _line(custom_id="a", **overrides) -> str:
    item = {
        "custom_id": custom_id,
        "method": "POST",
        "url": URL,
        "body": {"messages": [{"role": "user", "content": "hi"}]},
    }
    item.update(overrides)
    return json.dumps(item)


def _parse(tmp_path, *lines: str, max_lines: int = 10):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return parse_input(path, URL, max_lines, _check)


def _errors(parsed) -> dict[int, tuple[str | None, str]]:
    out = {}
    for index, (_, outcome) in parsed.refused.items():
        line = json.loads(outcome.output)
        assert line["response"] is None
        assert outcome.failed
        out[index] = (line["custom_id"], line["error"]["code"])
    return out


def test_bad_lines_go_to_the_error_file_with_a_reason_while_the_rest_run(tmp_path):
    parsed = _parse(
        tmp_path,
        _line("ok-1"),
        "{not json",
        "[1, 2]",
        json.dumps({"method": "POST", "url": URL, "body": {}}),
        _line("ok-1"),
        _line("wrong-url", url="/v1/embeddings"),
        _line("no-messages", body={"messages": []}),
        _line("wrong-model", body={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}),
        _line("get", method="GET"),
        "",
        _line("ok-2"),
    )
    assert [(i, cid) for i, cid, _ in parsed.lines] == [(0, "ok-1"), (10, "ok-2")]
    assert json.loads(parsed.lines[0][2]) == {"messages": [{"role": "user", "content": "hi"}]}
    assert _errors(parsed) == {
        1: (None, "invalid_json"),
        2: (None, "invalid_json"),
        3: (None, "invalid_request"),
        4: ("ok-1", "duplicate_custom_id"),
        5: ("wrong-url", "invalid_url"),
        6: ("no-messages", "invalid_request"),
        7: ("wrong-model", "model_not_found"),
        8: ("get", "invalid_request"),
    }


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"\xff\xfe not utf-8", "not UTF-8"),
        (b"\n\n", "no request lines"),
        (
            b"just some text\nmore text\n",
            "No line of the input file is a usable request (line 1: not valid JSON",
        ),
    ],
)
def test_a_wholly_unusable_file_is_refused(tmp_path, content, reason):
    path = tmp_path / "in.jsonl"
    path.write_bytes(content)
    with pytest.raises(InvalidRequest, match=reason.replace("(", r"\(")):
        parse_input(path, URL, 10, _check)


def test_a_file_over_the_line_limit_is_refused(tmp_path):
    with pytest.raises(InvalidRequest, match="3 request lines; a batch may have at most 2"):
        _parse(tmp_path, _line("a"), _line("b"), _line("c"), max_lines=2)
