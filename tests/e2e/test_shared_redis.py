"""Several Glimpse replicas side by side share one Redis: the result cache and the rate limits."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.e2e.harness import GlimpseServer
from tests.images import png_bytes
from tests.redis_server import RedisProcess, running_redis


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module")
def replicas(redis, tiny_env, tmp_path_factory) -> Iterator[list[GlimpseServer]]:
    logs = tmp_path_factory.mktemp("replicas")
    env = {**tiny_env, "GLIMPSE_CACHE__REDIS_URL": redis.url, "GLIMPSE_GUARD__RATE_LIMIT_PER_MINUTE": "4"}
    servers = [GlimpseServer(["--model", "tiny"], env=env, log_path=logs / f"r{i}.log") for i in range(2)]
    try:
        for server in servers:
            server.start()
        for server in servers:
            server.wait_ready()
        yield servers
    finally:
        for server in servers:
            server.stop()


def _infer(server: GlimpseServer, colour: tuple[int, int, int], headers: dict[str, str] | None = None):
    body = {
        "image": base64.b64encode(png_bytes((72, 72), colour)).decode(),
        "text": "what?",
        "max_new_tokens": 6,
    }
    return httpx.post(f"{server.base_url}/infer", json=body, headers=headers or {}, timeout=120)


def test_an_answer_computed_by_one_replica_is_a_cache_hit_on_the_other(replicas):
    first = _infer(replicas[0], (1, 2, 3))
    second = _infer(replicas[1], (1, 2, 3))
    assert first.status_code == 200
    assert second.status_code == 200
    assert first.headers["x-glimpse-cache"] == "miss"
    assert second.headers["x-glimpse-cache"] == "hit"
    assert second.json() == first.json()


def test_the_rate_limit_is_enforced_across_replicas(replicas, redis):
    redis.client().flushdb()  # a fresh budget: the limit is 4 requests per minute per client
    statuses = [_infer(replicas[i % 2], (10, i, 30)).status_code for i in range(6)]
    assert statuses[:4] == [200, 200, 200, 200]
    assert statuses[4:] == [429, 429]


def test_replicas_keep_serving_when_redis_goes_away(replicas, redis, tmp_path: Path):
    redis.stop()
    try:
        response = _infer(replicas[0], (99, 98, 97))
        assert response.status_code == 200
        assert response.headers["x-glimpse-cache"] in ("miss", "bypass")
    finally:
        redis.start()
