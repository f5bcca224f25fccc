"""``logprobs``, ``n`` and ``logit_bias`` over real HTTP on the random tiny model, through the openai SDK.

The random model's answers mean nothing; what is checked is the shape, that a
greedy token is its own most likely one, that streamed and whole answers agree,
that seeded choices come back the same, and that a bias moves the answer.
"""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from tests.e2e.test_core import _client, _vision_messages
from tests.images import png_bytes

#: Every request here must be generated, not answered from the result cache.
FRESH = {"Cache-Control": "no-cache"}


def _messages() -> list[dict]:
    return _vision_messages(png_bytes((72, 56), (200, 120, 40)), "What colour is it?")


def _stream(server, **body) -> list[dict]:
    payload = {"model": "tiny", "messages": _messages(), "stream": True, **body}
    response = httpx.post(f"{server.base_url}/v1/chat/completions", json=payload, headers=FRESH, timeout=120)
    assert response.status_code == 200, response.text
    data = [line.removeprefix("data: ") for line in response.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


def test_logprobs_in_openais_shape_and_greedy_tokens_are_their_own_top(tiny_server):
    reply = _client(tiny_server).chat.completions.create(
        model="tiny", messages=_messages(), max_tokens=12, logprobs=True, top_logprobs=3
    )
    choice = reply.choices[0]
    content = choice.logprobs.content
    # One entry per answer token; an end-of-sequence token ending the answer has none.
    assert reply.usage.completion_tokens - len(content) in (0, 1)
    assert content
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.logprob <= 0
        top = [alt.logprob for alt in entry.top_logprobs]
        assert top == sorted(top, reverse=True)
        assert entry.top_logprobs[0].token == entry.token  # greedy: the most likely token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert bytes(entry.bytes).decode("utf-8", errors="replace") == entry.token


def test_streamed_logprobs_are_the_whole_answers(tiny_server):
    whole = _client(tiny_server).chat.completions.create(
        model="tiny", messages=_messages(), max_tokens=10, logprobs=True, top_logprobs=2
    )
    expected = [(e.token, e.logprob) for e in whole.choices[0].logprobs.content]
    streamed = []
    for event in _stream(tiny_server, max_tokens=10, logprobs=True, top_logprobs=2):
        (choice,) = event["choices"]
        if choice["logprobs"] is not None:
            streamed += [(e["token"], e["logprob"]) for e in choice["logprobs"]["content"]]
    assert [token for token, _ in streamed] == [token for token, _ in expected]
    assert [lp for _, lp in streamed] == pytest.approx([lp for _, lp in expected], abs=1e-4)


def test_seeded_choices_are_reproducible_and_streamed_with_their_index(tiny_server):
    client = _client(tiny_server)
    ask = {"model": "tiny", "messages": _messages(), "max_tokens": 16, "n": 2, "temperature": 1.0, "seed": 7}
    first = client.chat.completions.create(**ask, extra_headers=FRESH)
    again = client.chat.completions.create(**ask, extra_headers=FRESH)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in again.choices] == texts
    assert texts[0] != texts[1]  # each choice draws with its own seed
    assert first.usage.completion_tokens == sum(
        client.chat.completions.create(
            **{**ask, "n": 1, "seed": seed}, extra_headers=FRESH
        ).usage.completion_tokens
        for seed in (7, 8)
    )
    streamed = {0: "", 1: ""}
    for event in _stream(tiny_server, **{k: v for k, v in ask.items() if k not in ("model", "messages")}):
        for choice in event["choices"]:
            streamed[choice["index"]] += choice["delta"].get("content") or ""
    assert [streamed[0], streamed[1]] == texts


def test_the_sdk_takes_logprobs_and_n_together(tiny_server):
    reply = _client(tiny_server).chat.completions.create(
        model="tiny",
        messages=_messages(),
        max_tokens=6,
        n=2,
        logprobs=True,
        top_logprobs=1,
        seed=3,
        temperature=0.8,
    )
    assert len(reply.choices) == 2
    for choice in reply.choices:
        assert choice.logprobs.content
        assert all(len(entry.top_logprobs) == 1 for entry in choice.logprobs.content)


def test_a_large_bias_makes_its_token_every_greedy_choice(tiny_server):
    # Id 300 is an ordinary token of the tiny model's tokenizer (its special tokens start at 890).
    reply = _client(tiny_server).chat.completions.create(
        model="tiny", messages=_messages(), max_tokens=4, logprobs=True, logit_bias={"300": 100}
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == 4
    assert len({entry.token for entry in content}) == 1
    assert reply.choices[0].message.content == content[0].token * 4
    assert all(entry.logprob > -1e-3 for entry in content)  # the bias outweighs every other logit


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"n": 1000}, "n"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),  # beyond the model's vocabulary
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_bad_values_are_a_400_naming_the_parameter(tiny_server, extra, param, stream):
    with pytest.raises(openai.BadRequestError) as err:
        _client(tiny_server).chat.completions.create(
            model="tiny", messages=_messages(), max_tokens=4, stream=stream, extra_body=extra
        )
    assert err.value.status_code == 400
    assert err.value.body["param"] == param
