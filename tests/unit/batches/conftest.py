"""Both batch stores, built the same way, so one contract test runs on each.

The Redis store runs against a real redis-server (one per test module); each test gets
its own key prefix, as two deployments sharing one Redis would.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from tests.redis_server import RedisProcess, running_redis
from tests.unit.batches.stores import LEASE, Clock, redis_store

from glimpse.batches import BatchStore, SqliteBatchStore


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    with running_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator[BatchStore]:
    made: BatchStore
    if request.param == "sqlite":
        made = SqliteBatchStore(tmp_path, clock=clock)
    else:
        server = request.getfixturevalue("redis_server")
        made = redis_store(server, tmp_path, clock, f"t{secrets.token_hex(4)}", visibility_timeout_s=LEASE)
    await made.open()
    yield made
    await made.close()
