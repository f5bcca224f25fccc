"""The result cache is partitioned per client: one API key's hit must not reveal another's question."""

from __future__ import annotations

import asyncio

from pydantic import SecretStr
from tests.fakes import FakeEngine
from tests.images import data_url

from glimpse.config import CacheSettings, GuardSettings, Settings

KEY_A, KEY_B = "key-a-0123456789abcdef", "key-b-0123456789abcdef"
AUTH = GuardSettings(api_keys=(SecretStr(KEY_A), SecretStr(KEY_B)))


def _chat(**extra: object) -> dict[str, object]:
    content = [{"type": "image_url", "image_url": {"url": data_url()}}, {"type": "text", "text": "secret?"}]
    return {"messages": [{"role": "user", "content": content}], **extra}


def _as(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


async def test_another_keys_identical_question_is_not_a_hit(make_client) -> None:
    engine = FakeEngine()
    async with make_client(engine, Settings(guard=AUTH)) as client:
        a1 = await client.post("/v1/chat/completions", json=_chat(), headers=_as(KEY_A))
        b1 = await client.post("/v1/chat/completions", json=_chat(), headers=_as(KEY_B))
        a2 = await client.post("/v1/chat/completions", json=_chat(), headers=_as(KEY_A))
        b2 = await client.post("/v1/chat/completions", json=_chat(stream=True), headers=_as(KEY_B))
    assert [r.status_code for r in (a1, b1, a2, b2)] == [200] * 4
    assert a1.headers["x-glimpse-cache"] == "miss"
    assert b1.headers["x-glimpse-cache"] == "miss"  # was "hit": B learnt that someone asked this
    assert a2.headers["x-glimpse-cache"] == "hit"  # each key still has its own cache
    assert b2.headers["x-glimpse-cache"] == "hit"
    assert len(engine.requests) == 2


async def test_identical_requests_in_flight_are_not_shared_across_keys(make_client) -> None:
    """Single-flight is a cache too: joining B to A's running generation says "shared"."""
    engine = FakeEngine(delay_s=0.05)
    async with make_client(engine, Settings(guard=AUTH)) as client:
        a, b = await asyncio.gather(
            client.post("/v1/chat/completions", json=_chat(), headers=_as(KEY_A)),
            client.post("/v1/chat/completions", json=_chat(), headers=_as(KEY_B)),
        )
    assert {a.headers["x-glimpse-cache"], b.headers["x-glimpse-cache"]} == {"miss"}
    assert len(engine.requests) == 2


async def test_the_infer_route_is_partitioned_too(make_client) -> None:
    engine = FakeEngine()
    body = {"image": data_url(), "text": "secret?"}
    async with make_client(engine, Settings(guard=AUTH)) as client:
        a = await client.post("/infer", json=body, headers=_as(KEY_A))
        b = await client.post("/infer", json=body, headers=_as(KEY_B))
    assert [a.headers["x-glimpse-cache"], b.headers["x-glimpse-cache"]] == ["miss", "miss"]


async def test_operators_may_share_the_cache_across_keys(make_client) -> None:
    engine = FakeEngine()
    settings = Settings(guard=AUTH, cache=CacheSettings(shared_across_clients=True))
    async with make_client(engine, settings) as client:
        a = await client.post("/v1/chat/completions", json=_chat(), headers=_as(KEY_A))
        b = await client.post("/v1/chat/completions", json=_chat(), headers=_as(KEY_B))
    assert [a.headers["x-glimpse-cache"], b.headers["x-glimpse-cache"]] == ["miss", "hit"]
    assert len(engine.requests) == 1
