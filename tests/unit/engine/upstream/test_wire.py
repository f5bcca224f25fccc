import base64
import dataclasses
import io
import json

import httpx
import pytest
from PIL import Image

from glimpse.engine.protocol import (
    ChatMessage,
    FinishReason,
    ImagePart,
    ResponseFormat,
    TextPart,
    ToolCall,
    Tools,
)
from glimpse.engine.upstream.wire import (
    ImageEncoder,
    chat_body,
    encode_data_url,
    error_for_status,
    finish_reason,
    parse_chunk,
    resolve_model,
    token_logprobs,
)
from glimpse.errors import (
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    RateLimited,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from glimpse.media.threads import BlockingRunner
from glimpse.sse import aiter_sse_data

from ._fakes import chunk, make_request


async def _lines(*lines):
    for line in lines:
        yield line


async def test_iter_sse_data_handles_comments_multiline_and_missing_final_blank():
    lines = [
        ": keep-alive",
        "",
        'data: {"a": 1}',
        "",
        "event: x",
        "data: one",
        "data: two",
        "",
        "data:[DONE]",
    ]
    assert [d async for d in aiter_sse_data(_lines(*lines))] == ['{"a": 1}', "one\ntwo", "[DONE]"]


def test_parse_chunk_text_finish_and_usage():
    assert parse_chunk(chunk("Hi").decode()[6:]).text == "Hi"
    assert (
        finish_reason(parse_chunk(chunk(finish="length").decode()[6:]).finish_reason) is FinishReason.LENGTH
    )
    assert (
        finish_reason(parse_chunk(chunk(finish="tool_calls").decode()[6:]).finish_reason) is FinishReason.STOP
    )
    assert (
        finish_reason(parse_chunk(chunk(finish="abort").decode()[6:]).finish_reason) is FinishReason.CANCELLED
    )
    assert parse_chunk(chunk(usage=(7, 2)).decode()[6:]).usage == (7, 2)
    role_only = parse_chunk('{"choices": [{"delta": {"role": "assistant"}, "finish_reason": null}]}')
    assert (role_only.text, role_only.finish_reason, role_only.usage) == ("", None, None)


@pytest.mark.parametrize(
    "data",
    [
        '{"error": {"message": "CUDA out of memory", "code": 500}}',
        '{"object": "error", "message": "CUDA out of memory"}',
    ],
)
def test_parse_chunk_error_event(data):
    parsed = parse_chunk(data)
    assert parsed.error == "CUDA out of memory"  # for the log; the engine tells the client less
    assert (parsed.text, parsed.finish_reason) == ("", None)


@pytest.mark.parametrize("data", ["not json", "[1, 2]", '{"usage": {"prompt_tokens": "x"}}'])
def test_parse_chunk_malformed(data):
    with pytest.raises(UpstreamError, match="malformed"):
        parse_chunk(data)


@pytest.mark.parametrize(
    ("status", "body", "headers", "kind", "message", "retry_after"),
    [
        (
            400,
            {"error": {"message": "max_tokens is too large"}},
            {},
            InvalidRequest,
            "max_tokens is too large",
            None,
        ),
        (422, {"detail": "bad field"}, {}, InvalidRequest, "bad field", None),
        (413, {"message": "too big"}, {}, RequestTooLarge, "too big", None),
        (429, {"error": {"message": "slow down"}}, {"retry-after": "7"}, RateLimited, "slow down", 7),
        (
            404,
            {"object": "error", "message": "The model `x` does not exist."},
            {},
            ModelNotFound,
            "does not exist",
            None,
        ),
        (404, {"detail": "Not Found"}, {}, UpstreamError, "404", None),
        (401, {"error": {"message": "bad key"}}, {}, UpstreamError, "credentials", None),
        (503, {}, {"retry-after": "3"}, Overloaded, "unavailable", 3),
        (504, {}, {}, UpstreamTimeout, "timed out", None),
        (500, {"error": {"message": "boom"}}, {}, UpstreamError, "500", None),
    ],
)
def test_error_for_status(status, body, headers, kind, message, retry_after):
    error = error_for_status(status, httpx.Headers(headers), json.dumps(body).encode(), "http://u")
    assert type(error) is kind
    assert message in error.message
    assert error.retry_after == retry_after
    if status >= 500 or kind is UpstreamError:
        assert "boom" not in error.message
        assert "Not Found" not in error.message


def test_error_for_status_plain_text_body():
    error = error_for_status(400, httpx.Headers(), b"  prompt too long \n", "http://u")
    assert isinstance(error, InvalidRequest)
    assert error.message == "prompt too long"


def test_chat_body_sends_sampling_and_only_set_extras():
    body = chat_body(make_request(max_new_tokens=9, temperature=0.5, top_p=0.9), "their-model", [])
    assert body == {
        "model": "their-model",
        "messages": [],
        "max_tokens": 9,
        "temperature": 0.5,
        "top_p": 0.9,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    extra = chat_body(make_request(seed=3, stop=("END",), ignore_eos=True), "m", [])
    assert (extra["seed"], extra["stop"], extra["ignore_eos"]) == (3, ["END"], True)


def test_chat_body_passes_response_format_on_as_the_client_sent_it():
    schema = '{"type":"object","properties":{"b":{"type":"integer"},"a":{"type":"string"}}}'
    fmt = ResponseFormat("json_schema", schema, name="thing", strict=True)
    body = chat_body(make_request(response_format=fmt), "m", [])
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "thing", "schema": json.loads(schema), "strict": True},
    }
    assert list(body["response_format"]["json_schema"]["schema"]["properties"]) == ["b", "a"]
    plain = chat_body(make_request(response_format=ResponseFormat("json_object")), "m", [])
    assert plain["response_format"] == {"type": "json_object"}
    assert "response_format" not in chat_body(make_request(), "m", [])


def test_chat_body_sends_unset_temperature_as_greedy_and_new_settings_only_when_set():
    unset = chat_body(make_request(temperature=None, top_p=None), "m", [])
    assert (unset["temperature"], unset["top_p"]) == (0.0, 1.0)
    assert not {"top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"} & set(unset)
    settings = {
        "top_k": 0,  # set by the client, even to "off": the upstream's own default must not apply
        "min_p": 0.05,
        "repetition_penalty": 1.1,
        "presence_penalty": -0.5,
        "frequency_penalty": 0.0,
    }
    body = chat_body(make_request(temperature=0.7, **settings), "m", [])
    assert {name: body[name] for name in settings} == settings


def _decode(url: str) -> tuple[str, Image.Image]:
    header, payload = url.split(",", 1)
    return header, Image.open(io.BytesIO(base64.b64decode(payload)))


def _gradient(width: int, height: int) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x % 256, y % 256, (x * y) % 256) for y in range(height) for x in range(width)])
    return image


def test_encode_data_url_png_is_lossless():
    image = _gradient(40, 30)
    header, decoded = _decode(encode_data_url(image, png_max_pixels=40 * 30))
    assert header == "data:image/png;base64"
    assert decoded.convert("RGB").tobytes() == image.tobytes()


def test_encode_data_url_large_images_go_as_jpeg():
    image = _gradient(40, 30)
    header, decoded = _decode(encode_data_url(image, png_max_pixels=40 * 30 - 1))
    assert header == "data:image/jpeg;base64"
    assert decoded.size == (40, 30)


class CountingRunner(BlockingRunner):
    def __init__(self) -> None:
        super().__init__(1)
        self.calls = 0

    async def run(self, func, *args, **kwargs):
        self.calls += 1
        return await super().run(func, *args, **kwargs)


async def test_image_encoder_keeps_part_order_and_reuses_encodings():
    runner = CountingRunner()
    encoder = ImageEncoder(png_max_pixels=10_000, runner=runner)
    image = ImagePart(image=_gradient(16, 16), sha256="ab" * 32)
    messages = (
        ChatMessage(role="system", content=(TextPart("Be brief."),)),
        ChatMessage(role="user", content=(TextPart("Compare "), image, TextPart(" and "), image)),
    )
    wire = await encoder.messages(messages)
    assert wire[0] == {"role": "system", "content": "Be brief."}
    parts = wire[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image_url", "text", "image_url"]
    assert parts[1]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[1] == parts[3]
    assert runner.calls == 1


def test_resolve_model():
    assert resolve_model("glm", ["a", "glm"]) == "glm"
    assert resolve_model("GLM-4.6V-Flash", ["zai-org/GLM-4.6V-Flash", "other"]) == "zai-org/GLM-4.6V-Flash"
    assert resolve_model("tiny", ["only-one"]) == "only-one"
    assert resolve_model("tiny", ["a", "b"]) is None
    assert resolve_model("tiny", []) is None


def test_chat_body_passes_chat_template_kwargs_on():
    request = dataclasses.replace(make_request(), template_kwargs=(("enable_thinking", False),))
    assert chat_body(request, "m", [])["chat_template_kwargs"] == {"enable_thinking": False}
    assert "chat_template_kwargs" not in chat_body(make_request(), "m", [])


def test_parse_chunk_keeps_reasoning_apart():
    thought = parse_chunk(
        '{"choices":[{"index":0,"delta":{"reasoning_content":"hmm"},"finish_reason":null}]}'
    )
    answer = parse_chunk('{"choices":[{"index":0,"delta":{"content":"yes"},"finish_reason":null}]}')
    other = parse_chunk('{"choices":[{"index":0,"delta":{"reasoning":"so"},"finish_reason":null}]}')
    assert (thought.text, thought.reasoning) == ("", "hmm")
    assert (answer.text, answer.reasoning) == ("yes", "")
    assert other.reasoning == "so"


def test_reasoning_under_either_name_even_with_the_other_null():
    event = {"choices": [{"delta": {"reasoning_content": None, "reasoning": "thinking..."}}]}
    assert parse_chunk(json.dumps(event)).reasoning == "thinking..."
    event = {"choices": [{"delta": {"reasoning_content": "pondering", "reasoning": None}}]}
    assert parse_chunk(json.dumps(event)).reasoning == "pondering"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("99999999999", 60),  # from the attack: passed on as it came
        ("9" * 5000, 60),  # int() refuses more than 4300 digits
        ("61", 60),
        ("5", 5),
        ("007", 7),
        ("0", 1),
        ("²".encode(), None),  # str.isdigit() says yes, int() raised ValueError
        ("-3", None),
        ("1.2", 2),  # a fraction is rounded up: never sooner than the upstream asked
        ("Fri, 31 Dec 1999 23:59:59 GMT", 1),  # a past date: retry now, which is 1 s to a client
        ("Tue, 31 Dec 2999 23:59:59 GMT", 60),
        ("soon", None),
    ],
)
def test_retry_after_from_an_upstream_is_clamped(value, expected):
    error = error_for_status(
        429, httpx.Headers({"retry-after": value}), b"{}", "http://u", max_retry_after_s=60
    )
    assert isinstance(error, RateLimited)
    assert error.retry_after == expected


def test_chat_body_passes_logprobs_and_logit_bias_on_when_asked():
    body = chat_body(make_request(logprobs=3, logit_bias=((7, -100.0), (12, 2.5))), "m", [])
    assert (body["logprobs"], body["top_logprobs"]) == (True, 3)
    assert body["logit_bias"] == {"7": -100.0, "12": 2.5}
    plain = chat_body(make_request(), "m", [])
    assert not {"logprobs", "top_logprobs", "logit_bias"} & set(plain)


def test_a_chunks_logprobs_are_read_as_sent():
    entry = {
        "token": "é",
        "logprob": -0.25,
        "bytes": [195, 169],
        "top_logprobs": [
            {"token": "é", "logprob": -0.25, "bytes": [195, 169]},
            {"token": "e", "logprob": -2.0},
        ],
    }
    data = json.dumps(
        {"choices": [{"index": 0, "delta": {"content": "é"}, "logprobs": {"content": [entry]}}]}
    )
    (found,) = token_logprobs(parse_chunk(data).logprobs)
    assert (found.token, found.logprob, found.utf8) == ("é", -0.25, "é".encode())
    assert [(t.token, t.logprob, t.utf8, t.top) for t in found.top] == [
        ("é", -0.25, "é".encode(), ()),
        ("e", -2.0, b"e", ()),
    ]
    assert parse_chunk(chunk("x").decode()[6:]).logprobs == ()


@pytest.mark.parametrize(
    "content", [[{"logprob": -1.0}], [{"token": 3, "logprob": -1.0}], [{"token": "a", "logprob": "low"}]]
)
def test_malformed_logprobs_are_an_upstream_error(content):
    with pytest.raises(UpstreamError):
        token_logprobs(content)


def test_tools_and_a_history_of_calls_go_upstream_as_the_client_sent_them():
    tools = [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
    ]
    named = Tools(json.dumps(tools), "function", "f", False)
    body = chat_body(dataclasses.replace(make_request(), tools=named), "m", [])
    assert body["tools"] == tools
    assert body["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert body["parallel_tool_calls"] is False
    auto = chat_body(dataclasses.replace(make_request(), tools=Tools(json.dumps(tools))), "m", [])
    assert (auto["tool_choice"], "parallel_tool_calls" in auto) == ("auto", False)
    assert "tools" not in chat_body(make_request(), "m", [])


async def test_a_history_of_calls_and_results_goes_upstream_in_openai_shape():
    encoder = ImageEncoder(png_max_pixels=10, runner=BlockingRunner(1))
    wire = await encoder.messages(
        [
            ChatMessage("assistant", (), tool_calls=(ToolCall("call_1", "f", '{"a": 1}'),)),
            ChatMessage("tool", (TextPart("done"),), tool_call_id="call_1"),
        ]
    )
    assert wire == [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
            ],
        },
        {"role": "tool", "content": "done", "tool_call_id": "call_1"},
    ]
