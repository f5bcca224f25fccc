from __future__ import annotations

import asyncio
import json

from tests.fakes import FakeEngine
from tests.images import data_url, png_b64

from glimpse.config import CacheSettings, Settings


def _chat(**extra):
    content = [{"type": "image_url", "image_url": {"url": data_url()}}, {"type": "text", "text": "what?"}]
    return {"messages": [{"role": "user", "content": content}], **extra}


async def test_identical_greedy_requests_are_served_from_cache(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        first = await client.post("/v1/chat/completions", json=_chat())
        second = await client.post("/v1/chat/completions", json=_chat())
        other = await client.post("/v1/chat/completions", json=_chat(max_tokens=2))
    assert first.headers["x-glimpse-cache"] == "miss"
    assert second.headers["x-glimpse-cache"] == "hit"
    assert other.headers["x-glimpse-cache"] == "miss"
    assert second.json()["choices"] == first.json()["choices"]
    assert second.json()["usage"] == first.json()["usage"]
    assert len(engine.requests) == 2


async def test_sampled_requests_and_no_cache_bypass_the_cache(make_client):
    engine = FakeEngine()
    async with make_client(engine) as client:
        sampled = [await client.post("/v1/chat/completions", json=_chat(temperature=0.8)) for _ in range(2)]
        seeded = [
            await client.post("/v1/chat/completions", json=_chat(temperature=0.8, seed=3)) for _ in range(2)
        ]
        opted_out = await client.post(
            "/v1/chat/completions", json=_chat(), headers={"Cache-Control": "no-cache"}
        )
    assert [r.headers["x-glimpse-cache"] for r in sampled] == ["bypass", "bypass"]
    assert [r.headers["x-glimpse-cache"] for r in seeded] == ["miss", "hit"]
    assert opted_out.headers["x-glimpse-cache"] == "bypass"
    assert len(engine.requests) == 4


async def test_a_cached_streaming_request_still_streams(make_client):
    async with make_client(FakeEngine()) as client:
        await client.post("/v1/chat/completions", json=_chat())
        streamed = await client.post("/v1/chat/completions", json=_chat(stream=True))
    assert streamed.headers["x-glimpse-cache"] == "hit"
    events = [json.loads(line[6:]) for line in streamed.text.splitlines() if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"].get("content") for e in events if e["choices"]]
    assert [d for d in deltas if d] == ["hello", " ", "world"]


async def test_concurrent_identical_requests_run_once(make_client):
    engine = FakeEngine(delay_s=0.05)
    async with make_client(engine) as client:
        responses = await asyncio.gather(
            *(client.post("/infer", json={"image": png_b64(), "text": "q"}) for _ in range(5))
        )
    assert {r.json()["response"] for r in responses} == {"hello world"}
    assert len(engine.requests) == 1
    assert sorted(r.headers["x-glimpse-cache"] for r in responses).count("miss") == 1


async def test_requests_joining_a_generation_do_not_count_its_tokens_again(make_client):
    import asyncio

    engine = FakeEngine(delay_s=0.2)
    async with make_client(engine) as client:
        body = {"image": png_b64(), "text": "same question"}
        answers = await asyncio.gather(*(client.post("/infer", json=body) for _ in range(3)))
        metrics = (await client.get("/metrics")).text
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len(engine.requests) == 1
    assert "glimpse_generation_tokens_total 3.0" in metrics  # one generation of 3 tokens
    assert "glimpse_time_to_first_token_seconds_count 1.0" in metrics


async def test_cache_can_be_turned_off(make_client):
    engine = FakeEngine()
    settings = Settings(cache=CacheSettings(enabled=False))
    async with make_client(engine, settings) as client:
        for _ in range(2):
            response = await client.post("/infer", json={"image": png_b64(), "text": "q"})
            assert response.headers["x-glimpse-cache"] == "bypass"
    assert len(engine.requests) == 2


async def test_metrics_count_requests_tokens_and_cache(make_client):
    async with make_client(FakeEngine()) as client:
        await client.post("/v1/chat/completions", json=_chat())
        await client.post("/v1/chat/completions", json=_chat())
        await client.post("/infer", json={"image": "@@", "text": "q"})
        response = await client.get("/metrics")
    assert response.status_code == 200
    text = response.text
    assert 'glimpse_http_requests_total{route="/v1/chat/completions",status="200"} 2.0' in text
    assert 'glimpse_http_requests_total{route="/infer",status="400"} 1.0' in text
    assert "glimpse_generation_tokens_total 3.0" in text
    assert 'glimpse_cache_requests_total{result="hit"} 1.0' in text
    assert "glimpse_time_to_first_token_seconds_count 1.0" in text


async def test_page_files_are_counted_under_their_mount_not_as_unmatched(make_client, tmp_path):
    async with make_client(FakeEngine()) as client:
        assert (await client.get("/static/app.js")).status_code == 200
        metrics = (await client.get("/metrics")).text
    assert 'glimpse_http_requests_total{route="/static",status="200"} 1.0' in metrics
    assert 'route="unmatched"' not in metrics
