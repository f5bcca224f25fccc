"""``/readyz`` says why it is not ready only to callers with a valid credential.

Issue 12, F10: an unauthenticated ``/readyz`` of a gateway listed its upstream URLs
and their last errors.
"""

from __future__ import annotations

import httpx
import pytest
from pydantic import SecretStr
from tests.unit.engine.upstream._fakes import Cluster

from glimpse.config import EngineSettings, GuardSettings, Settings, UpstreamSettings
from glimpse.engine.upstream import UpstreamEngine

KEY = "readyz-test-key-0123456789"
UPSTREAM = "http://user:s3cret@upstream-a.internal:8000"


@pytest.fixture
async def gateway(make_client):
    """A gateway whose only upstream is down: not ready, with a detail that names it."""

    async def open_client(*, auth: bool):
        cluster = Cluster("upstream-a.internal")
        cluster["upstream-a.internal"].down = True
        engine_settings = EngineSettings(kind="upstream", model="GLM-Test")
        http = httpx.AsyncClient(transport=cluster.transport)
        engine = UpstreamEngine(
            engine_settings, UpstreamSettings(urls=(UPSTREAM,), health_interval_s=3600), http_client=http
        )
        guard = GuardSettings(api_keys=(SecretStr(KEY),)) if auth else GuardSettings()
        settings = Settings(engine=engine_settings, guard=guard)
        return http, make_client(engine, settings)

    return open_client


async def test_readyz_detail_only_with_a_valid_credential(gateway):
    http, client_context = await gateway(auth=True)
    async with http, client_context as client:
        anonymous = await client.get("/readyz")
        wrong_key = await client.get("/readyz", headers={"Authorization": "Bearer not-the-key"})
        probe_path = await client.get("/health")
        keyed = await client.get("/readyz", headers={"Authorization": f"Bearer {KEY}"})
        by_header = await client.get("/readyz", headers={"X-API-Key": KEY})
    for refused in (anonymous, wrong_key, probe_path):
        assert refused.status_code == 503
        assert refused.headers["retry-after"]
        assert refused.json() == {"status": "not_ready"}  # no upstream names, no errors
    for trusted in (keyed, by_header):
        assert trusted.status_code == 503
        detail = trusted.json()["detail"]
        assert "http://upstream-a.internal:8000 open" in detail
        assert "ConnectError" in detail
        assert "s3cret" not in detail  # credentials in the URL are never shown, even then


async def test_readyz_detail_with_auth_off_where_every_caller_is_trusted(gateway):
    http, client_context = await gateway(auth=False)
    async with http, client_context as client:
        response = await client.get("/readyz")
    assert response.status_code == 503
    assert "upstream-a.internal" in response.json()["detail"]
