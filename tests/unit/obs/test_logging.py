import asyncio
import io
import json
import logging

import pytest

from glimpse.config import ObsSettings
from glimpse.obs import (
    configure_logging,
    get_request_id,
    new_request_id,
    redact,
    request_id_context,
    reset_request_id,
    sanitize_request_id,
    set_request_id,
)
from glimpse.obs.logging import _REDACTIONS


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def json_log(restore_logging):
    stream = io.StringIO()
    configure_logging(ObsSettings(log_json=True, log_level="DEBUG"), stream=stream)

    def lines():
        return [json.loads(line) for line in stream.getvalue().splitlines()]

    return lines


def test_json_line_carries_request_id_and_extras(json_log):
    log = logging.getLogger("glimpse.test")
    with request_id_context("req-1"):
        log.info("served %s in %.1fs", "/infer", 1.25, extra={"status": 200, "route": "/infer"})
    log.warning("outside a request")
    first, second = json_log()
    assert first["message"] == "served /infer in 1.2s"
    assert first["request_id"] == "req-1"
    assert first["level"] == "INFO"
    assert first["logger"] == "glimpse.test"
    assert first["status"] == 200
    assert first["route"] == "/infer"
    assert first["ts"].endswith("+00:00")
    assert second["request_id"] is None


def test_level_is_applied(json_log):
    configure_logging(ObsSettings(log_json=True, log_level="WARNING"), stream=io.StringIO())
    assert not logging.getLogger("glimpse.test").isEnabledFor(logging.INFO)


async def test_request_id_follows_into_tasks(json_log):
    async def child():
        logging.getLogger("glimpse.test").info("in a task")

    with request_id_context("req-task"):
        await asyncio.create_task(child())
    lines = [line for line in json_log() if line["logger"] == "glimpse.test"]
    assert [line["request_id"] for line in lines] == ["req-task"]


def test_secrets_never_reach_the_line(json_log):
    log = logging.getLogger("glimpse.test")
    log.info("headers %s", {"Authorization": "Bearer s3cr3t-value"})
    log.info("config", extra={"url": "redis://:hunter2@cache:6379/0"})
    try:
        raise RuntimeError("bad key api_key=sk-abcdefghijklmnopqrstuvwx")
    except RuntimeError:
        log.exception("failed")
    text = json.dumps(json_log())
    for secret in ("s3cr3t-value", "hunter2", "sk-abcdefghijklmnopqrstuvwx"):
        assert secret not in text
    assert "[REDACTED]" in text
    assert "RuntimeError" in text


def test_plain_format_has_the_request_id(restore_logging):
    stream = io.StringIO()
    configure_logging(ObsSettings(log_json=False, log_level="INFO"), stream=stream)
    with request_id_context("req-plain"):
        logging.getLogger("glimpse.test").info("hello token=abc123")
    line = stream.getvalue().strip()
    assert "[req-plain]" in line
    assert "hello token=[REDACTED]" in line
    assert "abc123" not in line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("log_json", "stream_type", "json_lines"),
    [
        (None, _Terminal, False),  # a person at a terminal reads plain lines
        (None, io.StringIO, True),  # a pipe or file (a collector) gets JSON
        (True, _Terminal, True),
        (False, io.StringIO, False),
    ],
)
def test_format_follows_the_terminal_unless_set(restore_logging, log_json, stream_type, json_lines):
    stream = stream_type()
    configure_logging(ObsSettings(log_json=log_json, log_level="INFO"), stream=stream)
    with request_id_context("req-auto"):
        logging.getLogger("glimpse.test").info("hello")
    line = stream.getvalue().strip()
    if json_lines:
        assert json.loads(line)["message"] == "hello"
    else:
        assert line.endswith("[req-auto] hello")
        assert not line.startswith("{")


def test_configuring_twice_keeps_one_handler(restore_logging):
    before = len(logging.getLogger().handlers)
    configure_logging(ObsSettings(), stream=io.StringIO())
    configure_logging(ObsSettings(), stream=io.StringIO())
    assert len(logging.getLogger().handlers) == before + 1


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer abc.def-ghi", "abc.def-ghi"),
        ("authorization=Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("{'authorization': 'raw-token-1'}", "raw-token-1"),
        ("got bearer XYZ123 from client", "XYZ123"),
        ('{"x-api-key": "key-123"}', "key-123"),
        ("api_key=k1&other=2", "k1"),
        ("password: pw!", "pw!"),
        ("client_secret=cs-1", "cs-1"),
        ("access_token=at.1", "at.1"),
        ("use sk-proj-ABCDEFGHIJKLMNOPQRST now", "sk-proj-ABCDEFGHIJKLMNOPQRST"),
        ("jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_part", "eyJzdWIiOiIxIn0"),
        ("redis://user:pa55@host:6379", "pa55"),
    ],
)
def test_redact_masks_credentials(text, secret):
    cleaned = redact(text)
    assert secret not in cleaned
    assert "[REDACTED]" in cleaned


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer abc.def-ghi",
        "PAſSWORD: pw!",  # long s: the patterns' (?i) matches it as an s
        "x-api-\u212aey: k1",  # Kelvin sign for the k
        "AUTHOR\u0130ZATION: raw-1",  # dotted capital I, which case-folds to two characters
        "ap\u0131_key=k1",  # dotless i
        "the tokens_in field and a bearer-less line",
        "TOKEN=t1",
        "redis://user:pa55@host:6379",
        '{"logger": "glimpse.access", "message": "request", "route": "/v1/chat/completions"}',
    ],
)
def test_the_quick_check_never_skips_a_line_a_pattern_would_change(text):
    """``redact`` skips lines no pattern matches; it must give what the patterns give."""
    expected = text
    for pattern, replacement in _REDACTIONS:
        expected = pattern.sub(replacement, expected)
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    ["max_new_tokens=5", "prompt_tokens: 12", "completion_tokens=3", "a cat on a mat", "http://host:8080/v1"],
)
def test_redact_leaves_ordinary_text_alone(text):
    assert redact(text) == text


@pytest.mark.parametrize(
    ("incoming", "kept"),
    [
        ("abc-123_X.y", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("", False),
        (None, False),
        ("has space", False),
        ("evil\r\nSet-Cookie: x", False),
        ('quote"', False),
        ("ünïcode", False),
    ],
)
def test_sanitize_request_id(incoming, kept):
    result = sanitize_request_id(incoming)
    if kept:
        assert result == incoming
    else:
        assert result != incoming
        assert sanitize_request_id(result) == result


def test_new_request_ids_are_unique_and_valid():
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(sanitize_request_id(i) == i for i in ids)


def test_set_and_reset_request_id():
    assert get_request_id() is None
    token = set_request_id("r1")
    with request_id_context("r2"):
        assert get_request_id() == "r2"
    assert get_request_id() == "r1"
    reset_request_id(token)
    assert get_request_id() is None


def test_nested_extras_are_redacted_and_lines_stay_json(json_log):
    log = logging.getLogger("glimpse.test")
    log.info("upstream call", extra={"headers": {"Authorization": "Bearer nested-secret", "Accept": "x"}})
    log.info('quoted "api_key": "q-secret\\\\" and token=t\\"x')
    lines = json_log()  # parses every line: redaction must not break the JSON
    text = json.dumps(lines)
    assert "nested-secret" not in text
    assert "q-secret" not in text
    assert lines[0]["headers"]["Accept"] == "x"


def test_bad_format_args_do_not_raise(json_log, capsys):
    # Straight to our handler: pytest's own capture handler re-raises logging errors.
    (handler,) = [h for h in logging.getLogger().handlers if type(h).__name__ == "_GlimpseHandler"]
    record = logging.LogRecord("glimpse.test", logging.INFO, __file__, 1, "two %s %s", ("only-one",), None)
    handler.handle(record)
    assert "Logging error" in capsys.readouterr().err


def test_background_logging_formats_and_writes_off_the_callers_thread(restore_logging, monkeypatch):
    """The server's loop only queues a record; redaction, JSON and the write run in the listener."""
    import threading

    from glimpse.obs.logging import JsonFormatter

    formatted_in: list[str] = []
    real_format = JsonFormatter.format

    def spy(self, record):
        formatted_in.append(threading.current_thread().name)
        return real_format(self, record)

    monkeypatch.setattr(JsonFormatter, "format", spy)
    stream = io.StringIO()
    listener = configure_logging(ObsSettings(log_json=True), stream=stream, background=True)
    assert listener is not None
    try:
        args = ["Bearer sk-secret-1"]
        with request_id_context("req-bg"):
            logging.getLogger("glimpse.test").info("auth %s", args, extra={"status": 200})
        args[0] = "changed after the call"  # the line shows the arguments as they were
    finally:
        listener.stop()  # writes out what is queued
    (line,) = [json.loads(text) for text in stream.getvalue().splitlines()]
    assert line["request_id"] == "req-bg"  # stamped in the caller's context
    assert line["status"] == 200
    assert "sk-secret-1" not in line["message"]
    assert "changed" not in line["message"]
    assert formatted_in
    assert threading.current_thread().name not in formatted_in


def test_configuring_twice_in_the_background_keeps_one_handler(restore_logging):
    before = len(logging.getLogger().handlers)
    first = configure_logging(ObsSettings(), stream=io.StringIO(), background=True)
    second = configure_logging(ObsSettings(), stream=io.StringIO(), background=True)
    try:
        assert len(logging.getLogger().handlers) == before + 1
    finally:
        for listener in (first, second):
            assert listener is not None
            listener.stop()
