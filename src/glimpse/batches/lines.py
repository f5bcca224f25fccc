"""A batch's input file read into lines, and the lines its output and error files are made of.

Both shapes are OpenAI's: an input line is ``{"custom_id", "method": "POST", "url", "body"}``;
an output line is ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}``. A line that cannot run (not JSON, not a request, a repeated ``custom_id``, a body
the API refuses) is answered at once in the error file with the reason; a file with no line
that can run is refused whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glimpse.batches.records import LineOutcome, new_id
from glimpse.errors import ClientError, GlimpseError, InvalidRequest

__all__ = [
    "BodyCheck",
    "ParsedInput",
    "error_line",
    "error_message",
    "expired_line",
    "parse_input",
    "response_line",
]

#: How many refused lines a 400 for a wholly unusable file names.
_REASONS_SHOWN = 3


def response_line(custom_id: str, request_id: str, status_code: int, body: Mapping[str, Any]) -> str:
    """An answered request (any status: a 4xx or 5xx goes to the error file with its error body)."""
    response = {"status_code": status_code, "request_id": request_id, "body": body}
    return json.dumps(
        {"id": request_id, "custom_id": custom_id, "response": response, "error": None}, ensure_ascii=False
    )


def error_line(custom_id: str | None, code: str, message: str) -> str:
    """A line that never became a request (OpenAI's ``error`` object, no ``response``)."""
    return json.dumps(
        {
            "id": new_id("batch_req_"),
            "custom_id": custom_id,
            "response": None,
            "error": {"code": code, "message": message},
        },
        ensure_ascii=False,
    )


def expired_line(custom_id: str) -> str:
    """A line its batch's completion window closed on before it ran (OpenAI's ``batch_expired``)."""
    return error_line(
        custom_id, "batch_expired", "This request could not be executed before the completion window expired."
    )


@dataclass(slots=True)
class ParsedInput:
    #: (line index, custom_id, request body as JSON text) of each line that will run.
    lines: list[tuple[int, str, str]] = field(default_factory=list)
    #: line index -> (custom_id, error-file line) of each line refused.
    refused: dict[int, tuple[str, LineOutcome]] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    def refuse(self, index: int, custom_id: str | None, code: str, message: str) -> None:
        self.refused[index] = (custom_id or "", LineOutcome(error_line(custom_id, code, message), True))
        self.reasons.append(f"line {index + 1}: {message}")


#: Checks one request body as the endpoint would (raises a ``ClientError`` naming what is wrong).
BodyCheck = Callable[[dict[str, Any]], None]


def _request(raw: str) -> tuple[str | None, dict[str, Any] | None, str]:
    """(custom_id, the object, "") of a line, or what is wrong with it."""
    try:
        item = json.loads(raw)
    except json.JSONDecodeError as exc:
        return None, None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(item, dict):
        return None, None, "not a JSON object"
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return None, item, "custom_id must be a non-empty string"
    return custom_id, item, ""


def _check_line(item: dict[str, Any], endpoint: str, check: BodyCheck) -> tuple[str, str]:
    """("", "") for a line that can run, else (code, reason)."""
    if item.get("method", "POST") != "POST":
        return "invalid_request", "method must be POST"
    if item.get("url") != endpoint:
        return "invalid_url", f"url must be the batch's endpoint {endpoint!r}, not {item.get('url')!r}"
    body = item.get("body")
    if not isinstance(body, dict):
        return "invalid_request", "body must be a JSON object"
    try:
        check(body)
    except ClientError as exc:
        return exc.code, exc.message
    return "", ""


def parse_input(path: Path, endpoint: str, max_lines: int, check: BodyCheck) -> ParsedInput:
    """Every line of a batch's input file, accepted or refused; ``InvalidRequest`` if none can run.

    Blank lines are skipped (a trailing newline is not a request); line indexes count them,
    so a reason's line number is the one an editor shows.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The input file is not UTF-8 text (JSONL).", param="input_file_id") from None
    rows = [(i, raw) for i, raw in enumerate(text.splitlines()) if raw.strip()]
    if not rows:
        raise InvalidRequest("The input file has no request lines.", param="input_file_id")
    if len(rows) > max_lines:
        raise InvalidRequest(
            f"The input file has {len(rows)} request lines; a batch may have at most {max_lines}.",
            param="input_file_id",
        )
    parsed = ParsedInput()
    seen: set[str] = set()
    for index, raw in rows:
        custom_id, item, problem = _request(raw)
        if item is None or custom_id is None:
            parsed.refuse(index, custom_id, "invalid_json" if item is None else "invalid_request", problem)
            continue
        if custom_id in seen:
            parsed.refuse(
                index, custom_id, "duplicate_custom_id", f"custom_id {custom_id!r} repeats a line above"
            )
            continue
        seen.add(custom_id)
        code, reason = _check_line(item, endpoint, check)
        if code:
            parsed.refuse(index, custom_id, code, reason)
            continue
        parsed.lines.append((index, custom_id, json.dumps(item["body"], ensure_ascii=False)))
    if not parsed.lines:
        shown = "; ".join(parsed.reasons[:_REASONS_SHOWN])
        raise InvalidRequest(
            f"No line of the input file is a usable request ({shown}).", param="input_file_id"
        )
    return parsed


def error_message(exc: GlimpseError) -> dict[str, Any]:
    """A failed request's body, as the live endpoint would have answered it."""
    return {"error": {"message": exc.message, "type": exc.error_type, "code": exc.code, "param": exc.param}}
