from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import pytest
from asgi_lifespan import LifespanManager
from tests.fakes import FakeEngine

from glimpse.api.app import create_app
from glimpse.config import Settings

ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]

#: How long the watchdog gives an engine to let go of a finished test's requests.
WATCHDOG_DEADLINE_S = 3.0


async def assert_engine_idle(engine: object, deadline_s: float = WATCHDOG_DEADLINE_S) -> None:
    """Fail unless the engine's queue depth and running count are back to zero within the deadline.

    A request that hangs, or a slot a refused or abandoned request never gave back,
    shows here (issue 12, F1).
    """
    stop = time.monotonic() + deadline_s
    while True:
        health = engine.health()  # type: ignore[attr-defined]
        if health.queue_depth == 0 and health.running == 0:
            return
        if time.monotonic() > stop:
            raise AssertionError(
                f"the engine still holds requests {deadline_s:g}s after the test: "
                f"queue_depth={health.queue_depth}, running={health.running}"
            )
        await asyncio.sleep(0.02)


@pytest.fixture
def make_client(tmp_path) -> ClientFactory:
    """An in-process app over ASGITransport, with the given engine and settings.

    The audit and batch stores go to the test's temporary directory unless the settings name one:
    one batch directory for every app of the test (replicas share it, as they share a volume), an
    audit database of its own per app (two audit writers on one SQLite file wait up to SQLite's
    5 s busy timeout for each other, which once made a two-replica test's shutdown time out).
    Every test runs under the watchdog: leaving the client's block (normally) waits
    for the engine to be idle, with the app still running, or fails — so no test,
    hostile or not, can leave a request hanging or a queue slot taken.
    """

    apps = itertools.count()

    @asynccontextmanager
    async def factory(
        engine: object | None = None, settings: Settings | None = None
    ) -> AsyncIterator[httpx.AsyncClient]:
        settings = settings or Settings()
        if settings.guard.audit_log_path is None:
            audit = tmp_path / f"audit-{next(apps)}.sqlite3"
            guard = settings.guard.model_copy(update={"audit_log_path": audit})
            settings = settings.model_copy(update={"guard": guard})
        if settings.batch.dir is None:
            batch = settings.batch.model_copy(update={"dir": tmp_path / "batches"})
            settings = settings.model_copy(update={"batch": batch})
        engine = engine or FakeEngine()
        app = create_app(settings, engine=engine)  # type: ignore[arg-type]
        async with LifespanManager(app) as manager:
            transport = httpx.ASGITransport(app=manager.app)
            # A loopback name: by default the app serves only those Host headers (DNS rebinding).
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
                client.app = app  # type: ignore[attr-defined]  # for tests that steer the app's state
                client.asgi = manager.app  # type: ignore[attr-defined]  # for raw ASGI calls (disconnects)
                yield client
                await assert_engine_idle(engine)

    return factory
