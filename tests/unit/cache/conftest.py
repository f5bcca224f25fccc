"""A real redis-server on a free loopback port, which tests may kill, pause and restart."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.redis_server import RedisProcess, running_redis


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisProcess]:
    with running_redis(tmp_path) as server:
        yield server
