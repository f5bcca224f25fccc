"""The app's resources are closed through one exit stack: each even when closing another fails."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from tests.fakes import FakeEngine

import glimpse.api.app as app_module
from glimpse.api.app import create_app
from glimpse.config import GuardSettings, MediaSettings, Settings


class EngineThatFailsToStop(FakeEngine):
    async def stop(self) -> None:
        self.stopped = True
        raise RuntimeError("the engine thread would not stop")


@pytest.fixture
def fetch_clients(monkeypatch: pytest.MonkeyPatch) -> list[httpx.AsyncClient]:
    made: list[httpx.AsyncClient] = []
    real = app_module.create_fetch_client

    def create(settings: MediaSettings) -> httpx.AsyncClient:
        made.append(real(settings))
        return made[-1]

    monkeypatch.setattr(app_module, "create_fetch_client", create)
    return made


def _settings(tmp_path: Path) -> Settings:
    return Settings(guard=GuardSettings(audit_log_path=tmp_path / "audit.sqlite3"))


async def test_a_clean_shutdown_stops_the_engine_and_closes_the_rest(tmp_path, fetch_clients):
    engine = FakeEngine()
    app = create_app(_settings(tmp_path), engine=engine)
    async with LifespanManager(app):
        assert not app.state.glimpse.draining
    assert engine.stopped
    assert app.state.glimpse.draining
    (client,) = fetch_clients
    assert client.is_closed


async def test_an_engine_that_fails_to_stop_leaks_nothing_else(tmp_path, fetch_clients):
    engine = EngineThatFailsToStop()
    app = create_app(_settings(tmp_path), engine=engine)
    with pytest.raises(RuntimeError, match="would not stop"):
        async with LifespanManager(app):
            pass
    assert engine.stopped
    (client,) = fetch_clients
    assert client.is_closed
