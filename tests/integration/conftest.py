from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from tests.fakes import FakeEngine

from glimpse.api.app import create_app
from glimpse.config import Settings

ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]


@pytest.fixture
def make_client() -> ClientFactory:
    """An in-process app over ASGITransport, with the given engine and settings."""

    @asynccontextmanager
    async def factory(
        engine: object | None = None, settings: Settings | None = None
    ) -> AsyncIterator[httpx.AsyncClient]:
        app = create_app(settings or Settings(), engine=engine or FakeEngine())  # type: ignore[arg-type]
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                yield client

    return factory
