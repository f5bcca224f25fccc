from __future__ import annotations

from pydantic import SecretStr
from tests.fakes import FakeEngine

from glimpse.config import GuardSettings, Settings


async def test_security_headers_on_every_response(make_client):
    async with make_client(FakeEngine()) as client:
        response = await client.get("/healthz")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


async def test_cors_allows_only_listed_origins(make_client):
    settings = Settings(guard=GuardSettings(cors_origins=("https://app.example",)))
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    async with make_client(FakeEngine(), settings) as client:
        allowed = await client.options(
            "/v1/chat/completions", headers={"Origin": "https://app.example", **preflight}
        )
        denied = await client.options(
            "/v1/chat/completions", headers={"Origin": "https://evil.example", **preflight}
        )
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in denied.headers


async def test_no_cors_headers_by_default(make_client):
    async with make_client(FakeEngine()) as client:
        response = await client.get("/v1/models", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in response.headers


async def test_metrics_can_be_protected_while_probes_stay_open(make_client):
    settings = Settings(guard=GuardSettings(metrics_api_key=SecretStr("scrape-key")))
    async with make_client(FakeEngine(), settings) as client:
        anonymous = await client.get("/metrics")
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        scraper = await client.get("/metrics", headers={"Authorization": "Bearer scrape-key"})
        lower = await client.get("/metrics", headers={"Authorization": "bearer scrape-key"})
        bare = await client.get("/metrics", headers={"Authorization": "scrape-key"})
        probes = [(await client.get(path)).status_code for path in ("/healthz", "/readyz")]
    assert anonymous.status_code == 401
    assert wrong.status_code == 401
    assert scraper.status_code == 200
    assert lower.status_code == 200  # the scheme is case-insensitive (RFC 9110), as on the API
    assert bare.status_code == 401  # a key without a scheme is not a bearer credential
    assert "glimpse_http_requests_total" in scraper.text
    assert probes == [200, 200]
