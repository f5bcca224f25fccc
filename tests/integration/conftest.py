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
def make_client(tmp_path) -> ClientFactory:
    """An in-process app over ASGITransport, with the given engine and settings.

    The audit store goes to the test's temporary directory unless the settings name one.
    """

    @asynccontextmanager
    async def factory(
        engine: object | None = None, settings: Settings | None = None
    ) -> AsyncIterator[httpx.AsyncClient]:
        settings = settings or Settings()
        if settings.guard.audit_log_path is None:
            guard = settings.guard.model_copy(update={"audit_log_path": tmp_path / "audit.sqlite3"})
            settings = settings.model_copy(update={"guard": guard})
        app = create_app(settings, engine=engine or FakeEngine())  # type: ignore[arg-type]
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
                client.app = app  # type: ignore[attr-defined]  # for tests that steer the app's state
                yield client

    return factory
