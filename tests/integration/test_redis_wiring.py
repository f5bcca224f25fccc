"""The app's Redis: one pool for the cache and the guard's stores, failures counted per use."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.redis_server import RedisProcess, running_redis

from glimpse.config import Settings


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path) as server:
        yield server


def _chat(text: str) -> dict[str, object]:
    return {"model": "fake-model", "messages": [{"role": "user", "content": text}]}


def _settings(url: str) -> Settings:
    return Settings(
        redis={"url": url, "timeout_s": 0.25, "backoff_s": 60},
        guard={"rate_limit_per_minute": 1000, "token_quota_per_day": 1_000_000},
    )


def _failures(metrics_text: str, store: str) -> float:
    prefix = f'glimpse_store_failures_total{{store="{store}"}} '
    lines = [line for line in metrics_text.splitlines() if line.startswith(prefix)]
    return float(lines[0][len(prefix) :]) if lines else 0.0


async def test_cache_limits_and_quotas_share_one_connection(make_client, redis_server):
    async with make_client(settings=_settings(redis_server.url)) as client:
        for i in range(4):
            response = await client.post("/v1/chat/completions", json=_chat(f"question {i}"))
            assert response.status_code == 200, response.text
        raw = redis_server.client()
        keys = {key.decode().split(":")[1] for key in raw.keys("glimpse:*")}
        assert keys == {"cache", "ratelimit", "quota"}  # all three uses went to Redis
        own = str(raw.client_id())
        app_connections = [c for c in raw.client_list() if c["id"] != own]
        # Three pools would hold a connection each; the shared one needs at most two (the quota
        # and the cache are written at the same time when an answer ends).
        assert len(app_connections) <= 2, [(c["id"], c["cmd"]) for c in app_connections]


async def test_a_dead_redis_is_counted_per_use_and_never_fails_a_request(make_client, redis_server):
    async with make_client(settings=_settings(redis_server.url)) as client:
        redis_server.stop()
        for i in range(3):
            response = await client.post("/v1/chat/completions", json=_chat(f"question {i}"))
            assert response.status_code == 200, response.text
        metrics = (await client.get("/metrics")).text
    # One failure each, then Redis is left alone for the back-off (60 s).
    assert _failures(metrics, "cache") == 1
    assert _failures(metrics, "rate_limit") == 1
    assert _failures(metrics, "quota") == 1
