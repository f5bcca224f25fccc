from __future__ import annotations

import json

import pytest
from tests.fakes import FakeEngine
from tests.images import data_url, png_b64

from glimpse.config import EngineSettings, ServerSettings, Settings
from glimpse.engine.protocol import ImagePart, TextPart
from glimpse.errors import Overloaded


def _chat(content, **extra):
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **extra}


def _vision(text="what is this?"):
    return [{"type": "image_url", "image_url": {"url": data_url()}}, {"type": "text", "text": text}]


def _assert_error_shape(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str)
    assert body["error"]["message"]
    assert "Traceback" not in response.text


async def test_completion_returns_answer_usage_and_request_id(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        response = await client.post(
            "/v1/chat/completions", json=_chat(_vision(), max_tokens=50), headers={"X-Request-ID": "abc-123"}
        )
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "hello world"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    assert response.headers["x-request-id"] == "abc-123"
    (request,) = engine.requests
    assert request.request_id.startswith("abc-123.")
    image, text = request.messages[0].content
    assert isinstance(image, ImagePart)
    assert image.image.size == (96, 64)
    assert len(image.sha256) == 64
    assert text == TextPart("what is this?")


async def test_sampling_settings_reach_the_engine(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        body = _chat(_vision(), max_completion_tokens=2, temperature=0.7, top_p=0.9, seed=5, stop=["x", "y"])
        response = await client.post("/v1/chat/completions", json=body)
    assert response.json()["choices"][0]["finish_reason"] == "length"
    sampling = engine.requests[0].sampling
    assert (sampling.max_new_tokens, sampling.temperature, sampling.top_p, sampling.seed, sampling.stop) == (
        2,
        0.7,
        0.9,
        5,
        ("x", "y"),
    )


SAMPLING = {
    "top_k": 20,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "presence_penalty": -0.5,
    "frequency_penalty": 2.0,
    "seed": 9,
}


async def test_every_sampling_parameter_reaches_the_engine_and_unset_ones_stay_unset(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        await client.post("/v1/chat/completions", json=_chat(_vision(), temperature=0.6, **SAMPLING))
        await client.post("/v1/chat/completions", json=_chat(_vision(), top_k=-1))  # vLLM's "off"
        await client.post(
            "/infer", json={"image": png_b64(), "text": "what?", "temperature": 0.6, **SAMPLING}
        )
    chat, off, infer = (request.sampling for request in engine.requests)
    assert chat == infer
    assert {name: getattr(chat, name) for name in SAMPLING} == SAMPLING
    assert chat.temperature == 0.6
    assert off.top_k == 0
    assert (off.temperature, off.top_p, off.min_p, off.repetition_penalty) == (None, None, None, None)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("top_k", -2),
        ("top_k", 1.5),
        ("min_p", 1.5),
        ("repetition_penalty", 0),
        ("repetition_penalty", 2.5),
        ("presence_penalty", 2.1),
        ("frequency_penalty", -3),
        ("top_p", 0),
    ],
)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/infer"])
async def test_out_of_range_sampling_parameters_are_422s_naming_the_field(make_client, path, field, value):
    engine = FakeEngine()
    body = _chat(_vision()) if path.startswith("/v1") else {"image": png_b64(), "text": "what?"}
    async with make_client(engine) as client:
        response = await client.post(path, json={**body, field: value})
    _assert_error_shape(response, 422, "invalid_request")
    assert response.json()["error"]["param"] == field
    assert engine.requests == []


async def test_streaming_sends_openai_chunks_usage_and_done(make_client):
    async with make_client(FakeEngine()) as client:
        body = _chat(_vision(), stream=True, stream_options={"include_usage": True})
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "hello world"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_text_only_and_system_messages_are_accepted(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        body = {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert [m.role for m in engine.requests[0].messages] == ["system", "user"]


async def test_models_lists_the_served_model(make_client):
    async with make_client(FakeEngine(name="glm")) as client:
        body = (await client.get("/v1/models")).json()
    assert [m["id"] for m in body["data"]] == ["glm"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"messages": []}, 422, "invalid_request"),
        ({"messages": "nope"}, 422, "invalid_request"),
        (_chat(_vision(), n=99), 400, "invalid_request"),
        (_chat(_vision(), temperature=5), 422, "invalid_request"),
        ({"model": "other", "messages": [{"role": "user", "content": "x"}]}, 404, "model_not_found"),
        ({"messages": [{"role": "system", "content": "only system"}]}, 400, "invalid_request"),
        (
            _chat([{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]),
            400,
            "invalid_image",
        ),
        (
            _chat(
                [{"type": "image_url", "image_url": {"url": "data:text/html;base64,PGh0bWw+PC9odG1sPg=="}}]
            ),
            415,
            "unsupported_media_type",
        ),
        (_chat(_vision(), max_tokens=10**6), 400, "invalid_request"),
    ],
)
async def test_bad_requests_get_openai_shaped_errors(make_client, body, status, code):
    async with make_client(FakeEngine()) as client:
        response = await client.post("/v1/chat/completions", json=body)
    _assert_error_shape(response, status, code)


async def test_invalid_json_is_a_422_in_the_same_shape(make_client):
    async with make_client(FakeEngine()) as client:
        response = await client.post(
            "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
        )
    _assert_error_shape(response, 422, "invalid_request")


async def test_overloaded_engine_answers_503_with_retry_after(make_client):
    engine = FakeEngine(raise_on_submit=Overloaded("queue full", retry_after=3))
    async with make_client(engine) as client:
        plain = await client.post("/v1/chat/completions", json=_chat(_vision()))
        streamed = await client.post("/v1/chat/completions", json=_chat(_vision(), stream=True))
    for response in (plain, streamed):
        _assert_error_shape(response, 503, "overloaded")
        assert response.headers["retry-after"] == "3"


async def test_body_larger_than_the_limit_is_413(make_client):
    settings = Settings(server=ServerSettings(max_body_bytes=1000))
    async with make_client(FakeEngine(), settings) as client:
        response = await client.post("/v1/chat/completions", json=_chat(_vision("x" * 5000)))
    _assert_error_shape(response, 413, "request_too_large")


async def test_too_many_images_is_refused(make_client):
    async with make_client(FakeEngine()) as client:
        content = [{"type": "image_url", "image_url": {"url": data_url()}}] * 5 + [
            {"type": "text", "text": "?"}
        ]
        response = await client.post("/v1/chat/completions", json=_chat(content))
    assert response.status_code in (400, 413)
    assert response.json()["error"]["code"]


async def test_unknown_route_and_wrong_method_use_the_error_shape(make_client):
    async with make_client(FakeEngine()) as client:
        missing = await client.get("/v1/nothing")
        wrong = await client.get("/v1/chat/completions")
    _assert_error_shape(missing, 404, "not_found")
    _assert_error_shape(wrong, 405, "method_not_allowed")


async def test_default_max_tokens_comes_from_settings(make_client):
    engine = FakeEngine()
    settings = Settings(engine=EngineSettings(default_max_new_tokens=33))
    async with make_client(engine, settings) as client:
        await client.post("/v1/chat/completions", json=_chat(_vision()))
    assert engine.requests[0].sampling.max_new_tokens == 33


async def test_chat_template_kwargs_reach_the_engine_and_the_cache_key(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        thinking_off = await client.post(
            "/v1/chat/completions", json=_chat(_vision(), chat_template_kwargs={"enable_thinking": False})
        )
        default = await client.post("/v1/chat/completions", json=_chat(_vision()))
        too_many = await client.post(
            "/v1/chat/completions", json=_chat(_vision(), chat_template_kwargs={f"k{i}": i for i in range(9)})
        )
    assert engine.requests[0].template_kwargs == (("enable_thinking", False),)
    assert engine.requests[1].template_kwargs == ()
    assert thinking_off.headers["x-glimpse-cache"] == "miss"
    assert default.headers["x-glimpse-cache"] == "miss"  # other template variables, other answer
    assert too_many.status_code == 422


async def test_concurrent_requests_may_share_an_x_request_id(make_client):
    import asyncio

    engine = FakeEngine(delay_s=0.02)
    async with make_client(engine) as client:
        bodies = [_chat(_vision(f"question {i}")) for i in range(3)]
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=b, headers={"X-Request-ID": "same"}) for b in bodies)
        )
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert len({r.request_id for r in engine.requests}) == 3
    assert all(r.headers["x-request-id"] == "same" for r in responses)


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/v1/chat/completions", {"json": _chat(_vision(), max_tokens=5000)}),
        ("/v1/chat/completions", {"json": _chat(_vision(), max_completion_tokens=5000)}),
        ("/infer", {"json": {"image": png_b64(), "text": "what?", "max_new_tokens": 5000}}),
        (
            "/v1/analyze",
            {"files": {"image": ("a.png", b"x")}, "data": {"question": "q", "max_new_tokens": "5000"}},
        ),
    ],
)
async def test_max_tokens_above_the_limit_is_refused_naming_max_tokens_on_every_route(
    make_client, path, kwargs
):
    engine = FakeEngine()
    async with make_client(engine) as client:
        response = await client.post(path, **kwargs)
    _assert_error_shape(response, 400, "invalid_request")
    error = response.json()["error"]
    assert error["param"] == "max_tokens"
    assert error["message"] == "max_tokens is 5000, above this server's limit of 4096."
    assert engine.requests == []


async def test_a_vanishing_temperature_is_greedy_for_the_cache_too(make_client):
    # The engine decodes temperatures below 1e-5 greedily; the cache must agree and reuse them.
    engine = FakeEngine()
    async with make_client(engine) as client:
        first = await client.post("/v1/chat/completions", json=_chat(_vision(), temperature=1e-6))
        again = await client.post("/v1/chat/completions", json=_chat(_vision(), temperature=1e-6))
        sampled = await client.post("/v1/chat/completions", json=_chat(_vision(), temperature=0.5))
    assert (first.headers["x-glimpse-cache"], again.headers["x-glimpse-cache"]) == ("miss", "hit")
    assert sampled.headers["x-glimpse-cache"] != "hit"


async def test_response_format_reaches_the_engine_with_the_schema_in_the_clients_order(make_client):
    engine = FakeEngine()
    schema = {"type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}}
    async with make_client(engine) as client:
        for response_format in (fmt, {"type": "json_object"}, {"type": "text"}):
            response = await client.post(
                "/v1/chat/completions", json=_chat(_vision(), response_format=response_format)
            )
            assert response.status_code == 200, response.text
    structured, any_object, text = (r.sampling.response_format for r in engine.requests)
    assert structured is not None
    assert (structured.type, structured.name, structured.strict) == ("json_schema", "thing", True)
    assert list(json.loads(structured.schema)["properties"]) == ["b", "a"]
    assert any_object is not None
    assert any_object.type == "json_object"
    assert text is None


@pytest.mark.parametrize(
    ("response_format", "status", "param"),
    [
        ({"type": "json_schema", "json_schema": {"name": "x"}}, 400, "response_format"),
        ({"type": "json_schema", "json_schema": {"name": "no spaces", "schema": {}}}, 422, None),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "stict": True}}, 422, None),
        ({"type": "xml"}, 422, None),
    ],
)
async def test_malformed_response_format_is_refused_before_the_engine(
    make_client, response_format, status, param
):
    engine = FakeEngine()
    async with make_client(engine) as client:
        response = await client.post(
            "/v1/chat/completions", json=_chat(_vision(), response_format=response_format)
        )
    _assert_error_shape(response, status, "invalid_request")
    assert response.json()["error"]["param"].startswith(param or "response_format")
    assert engine.requests == []


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"guided_json": {"type": "object"}}, "guided_json"),
        ({"max_tokns": 5}, "max_tokns"),
    ],
)
async def test_unsupported_parameters_are_a_400_naming_them_before_the_engine(make_client, extra, param):
    engine = FakeEngine()
    async with make_client(engine) as client:
        response = await client.post("/v1/chat/completions", json=_chat(_vision(), **extra))
    _assert_error_shape(response, 400, "unsupported_parameter")
    assert response.json()["error"]["param"] == param
    assert engine.requests == []


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/responses"])
async def test_other_openai_generation_paths_are_a_404_pointing_to_chat_completions(make_client, path):
    async with make_client(FakeEngine()) as client:
        response = await client.post(path, json={"model": "fake-model", "prompt": "hi"})
    _assert_error_shape(response, 404, "not_found")
    assert "/v1/chat/completions" in response.json()["error"]["message"]
