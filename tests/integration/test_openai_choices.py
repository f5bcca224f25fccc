"""``n``, ``logprobs`` / ``top_logprobs`` and ``logit_bias`` on /v1/chat/completions, over a fake engine:
OpenAI's shapes, the per-choice requests, the cache rules and the 400s that name the parameter."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import pytest
from tests.fakes import FakeEngine
from tests.images import data_url

from glimpse.config import CacheSettings, EngineSettings, Settings
from glimpse.engine.protocol import FinishReason, GenerationRequest, TokenEvent, TokenLogprob


def _chat(**extra):
    content = [{"type": "image_url", "image_url": {"url": data_url()}}, {"type": "text", "text": "what?"}]
    return {"model": "fake-model", "messages": [{"role": "user", "content": content}], **extra}


def _entry(token: str, logprob: float, top: int) -> TokenLogprob:
    alternatives = tuple(TokenLogprob(f"{token}{k}", logprob - k, f"{token}{k}".encode()) for k in range(top))
    return TokenLogprob(token, logprob, token.encode(), alternatives)


@dataclass
class LogprobEngine(FakeEngine):
    """Answers ``words``, each event with the log-probability entry the request asked for; the last
    word's entry is at ``-inf`` (a token the grammar forbids), which JSON cannot carry."""

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        self.requests.append(request)
        top = request.sampling.logprobs
        for i, word in enumerate(self.words, start=1):
            logprob = -math.inf if i == len(self.words) else -0.5 * i
            entries = () if top is None else (_entry(word, logprob, top),)
            yield TokenEvent(word, (i,), None, 7, i, logprobs=entries)
        yield TokenEvent("", (), FinishReason.STOP, 7, len(self.words))


def _events(text: str) -> list[dict]:
    lines = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(line) for line in lines[:-1]]


async def test_n_choices_are_requests_of_their_own_with_derived_seeds(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        response = await client.post("/v1/chat/completions", json=_chat(n=3, temperature=0.8, seed=5))
    assert response.status_code == 200, response.text
    body = response.json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "hello world" for c in body["choices"])
    assert body["usage"] == {"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16}
    assert sorted(r.sampling.seed for r in engine.requests) == [5, 6, 7]
    assert len({r.request_id for r in engine.requests}) == 3


async def test_a_seed_at_the_top_of_the_range_wraps_around(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        response = await client.post("/v1/chat/completions", json=_chat(n=2, temperature=0.8, seed=2**64 - 1))
    assert response.status_code == 200, response.text
    assert sorted(r.sampling.seed for r in engine.requests) == [-(2**63), 2**64 - 1]


async def test_streamed_choices_carry_their_index_and_usage_counts_the_prompt_once(make_client):
    async with make_client(FakeEngine()) as client:
        body = _chat(n=2, stream=True, stream_options={"include_usage": True}, temperature=0.5)
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    events = _events(response.text)
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    for event in events[:-1]:
        (choice,) = event["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + (choice["delta"].get("content") or "")
        if choice["finish_reason"]:
            finishes[choice["index"]] = choice["finish_reason"]
    assert texts == {0: "hello world", 1: "hello world"}
    assert finishes == {0: "stop", 1: "stop"}
    assert events[-1]["choices"] == []
    assert events[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 6, "total_tokens": 13}


@pytest.mark.parametrize("n", [0, 5])
async def test_n_beyond_the_servers_maximum_is_a_400_naming_n(make_client, n):
    engine = FakeEngine()
    settings = Settings(engine=EngineSettings(max_n=4))
    async with make_client(engine, settings) as client:
        response = await client.post("/v1/chat/completions", json=_chat(n=n))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "n"
    assert engine.requests == []


async def test_logprobs_come_in_openais_shape(make_client):
    engine = LogprobEngine()
    async with make_client(engine) as client:
        response = await client.post("/v1/chat/completions", json=_chat(logprobs=True, top_logprobs=2))
    assert response.status_code == 200, response.text
    assert engine.requests[0].sampling.logprobs == 2
    logprobs = response.json()["choices"][0]["logprobs"]
    assert logprobs["refusal"] is None
    first, _, last = logprobs["content"]
    assert first == {
        "token": "hello",
        "logprob": -0.5,
        "bytes": list(b"hello"),
        "top_logprobs": [
            {"token": "hello0", "logprob": -0.5, "bytes": list(b"hello0")},
            {"token": "hello1", "logprob": -1.5, "bytes": list(b"hello1")},
        ],
    }
    assert last["logprob"] == -9999.0  # -inf, as vLLM sends it
    assert last["top_logprobs"][1]["logprob"] == -9999.0


async def test_logprobs_without_top_logprobs_list_no_alternatives(make_client):
    engine = LogprobEngine()
    async with make_client(engine) as client:
        response = await client.post("/v1/chat/completions", json=_chat(logprobs=True))
    assert engine.requests[0].sampling.logprobs == 0
    content = response.json()["choices"][0]["logprobs"]["content"]
    assert [entry["top_logprobs"] for entry in content] == [[], [], []]


async def test_streamed_logprobs_come_with_their_tokens(make_client):
    async with make_client(LogprobEngine()) as client:
        body = _chat(logprobs=True, top_logprobs=1, stream=True)
        response = await client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    tokens = []
    for event in _events(response.text):
        (choice,) = event["choices"]
        if choice["logprobs"] is not None:
            (entry,) = choice["logprobs"]["content"]
            assert entry["token"] == choice["delta"]["content"]
            assert len(entry["top_logprobs"]) == 1
            tokens.append(entry["token"])
    assert tokens == ["hello", " ", "world"]


async def test_without_logprobs_none_are_asked_for_or_sent(make_client):
    engine = LogprobEngine()
    async with make_client(engine) as client:
        response = await client.post("/v1/chat/completions", json=_chat(logprobs=False, top_logprobs=0))
    assert engine.requests[0].sampling.logprobs is None
    assert response.json()["choices"][0]["logprobs"] is None


async def test_answers_with_logprobs_bypass_the_cache(make_client):
    engine = LogprobEngine()
    async with make_client(engine) as client:
        for _ in range(2):
            response = await client.post("/v1/chat/completions", json=_chat(logprobs=True))
            assert response.headers["x-glimpse-cache"] == "bypass"
            assert response.json()["choices"][0]["logprobs"]["content"]
    assert len(engine.requests) == 2


async def test_unseeded_sampled_choices_never_share_a_cached_answer(make_client):
    engine = FakeEngine()
    settings = Settings(cache=CacheSettings(allow_sampled=True))
    async with make_client(engine, settings) as client:
        for _ in range(2):
            response = await client.post("/v1/chat/completions", json=_chat(n=2, temperature=0.9))
            assert response.headers["x-glimpse-cache"] == "bypass"
    assert len(engine.requests) == 4


async def test_seeded_choices_are_cached_each_under_its_own_seed(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        first = await client.post("/v1/chat/completions", json=_chat(n=2, temperature=0.9, seed=1))
        again = await client.post("/v1/chat/completions", json=_chat(n=2, temperature=0.9, seed=1))
        shifted = await client.post("/v1/chat/completions", json=_chat(temperature=0.9, seed=2))
    assert first.headers["x-glimpse-cache"] == "miss"
    assert again.headers["x-glimpse-cache"] == "hit"
    assert shifted.headers["x-glimpse-cache"] == "hit"  # choice 1 of seed 1 is the answer of seed 2
    assert len(engine.requests) == 2


async def test_logit_bias_reaches_the_engine_by_token_id_and_keys_the_cache(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        plain = await client.post("/v1/chat/completions", json=_chat())
        biased = await client.post("/v1/chat/completions", json=_chat(logit_bias={"12": 5, "3": -100}))
    assert plain.headers["x-glimpse-cache"] == "miss"
    assert biased.headers["x-glimpse-cache"] == "miss"
    assert engine.requests[1].sampling.logit_bias == ((3, -100.0), (12, 5.0))


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logit_bias": {"12": 100.5}}, "logit_bias"),
        ({"logit_bias": {"12": -101}}, "logit_bias"),
        ({"logit_bias": {"twelve": 1}}, "logit_bias"),
        ({"logit_bias": {"-3": 1}}, "logit_bias"),
        ({"logit_bias": {"012": 1}}, "logit_bias"),
        ({"logit_bias": {"12": "high"}}, "logit_bias"),
        ({"logit_bias": {"12": True}}, "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(1025)}}, "logit_bias"),
    ],
)
async def test_bad_logprobs_and_logit_bias_are_a_400_naming_them_before_the_engine(make_client, extra, param):
    engine = FakeEngine()
    async with make_client(engine) as client:
        response = await client.post("/v1/chat/completions", json=_chat(**extra))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert engine.requests == []
