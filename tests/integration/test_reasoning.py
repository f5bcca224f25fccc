from __future__ import annotations

import json

from tests.fakes import ThinkingEngine
from tests.images import data_url, png_b64


def _chat(**extra):
    content = [{"type": "image_url", "image_url": {"url": data_url()}}, {"type": "text", "text": "what?"}]
    return {"messages": [{"role": "user", "content": content}], **extra}


async def test_reasoning_comes_apart_from_the_answer_streamed_or_not(make_client):
    async with make_client(ThinkingEngine()) as client:
        whole = await client.post("/v1/chat/completions", json=_chat())
        streamed = await client.post("/v1/chat/completions", json=_chat(stream=True))
        cached = await client.post("/v1/chat/completions", json=_chat(stream=True))
        simple = await client.post("/infer", json={"image": png_b64(), "text": "what?"})
    message = whole.json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "hello world", "reasoning_content": "let me look"}
    for response, cache in ((streamed, "hit"), (cached, "hit")):
        assert response.headers["x-glimpse-cache"] == cache
        deltas = [
            json.loads(line[6:])["choices"][0]["delta"]
            for line in response.text.splitlines()
            if line.startswith("data: {") and json.loads(line[6:])["choices"]
        ]
        assert "".join(d.get("reasoning_content", "") for d in deltas) == "let me look"
        assert "".join(d.get("content", "") for d in deltas) == "hello world"
    assert simple.json() == {"response": "hello world"}  # the simple API answers, without the thinking


async def test_a_fresh_stream_carries_reasoning_deltas_before_content(make_client):
    async with make_client(ThinkingEngine()) as client:
        response = await client.post(
            "/v1/chat/completions", json=_chat(stream=True), headers={"Cache-Control": "no-cache"}
        )
    kinds = []
    for line in response.text.splitlines():
        if line.startswith("data: {"):
            for choice in json.loads(line[6:])["choices"]:
                kinds.extend(k for k in ("reasoning_content", "content") if choice["delta"].get(k))
    assert kinds == ["reasoning_content", "reasoning_content", "content", "content", "content"]
