from __future__ import annotations

import pytest
from pydantic import SecretStr
from tests.fakes import FakeEngine
from tests.images import png_bytes

from glimpse.config import GuardSettings, ServerSettings, Settings


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


def _upload() -> dict:
    return {"files": {"image": ("a.png", png_bytes(), "image/png")}, "data": {"question": "q"}}


async def test_without_auth_cross_site_browser_requests_are_refused(make_client):
    """F12: any web page could post to /v1/analyze of a server on the visitor's loopback."""
    settings = Settings(guard=GuardSettings(cors_origins=("https://app.example",)))
    async with make_client(FakeEngine(), settings) as client:
        evil = await client.post("/v1/analyze", headers={"Origin": "https://evil.example"}, **_upload())
        null = await client.post("/v1/analyze", headers={"Origin": "null"}, **_upload())
        other_port = await client.post(
            "/v1/analyze", headers={"Origin": "http://127.0.0.1:3000", "Host": "127.0.0.1:8080"}, **_upload()
        )
        no_origin = await client.get("/v1/models", headers={"Sec-Fetch-Site": "cross-site"})
        same_origin = await client.post(
            "/v1/analyze", headers={"Origin": "http://127.0.0.1:8080", "Host": "127.0.0.1:8080"}, **_upload()
        )
        listed = await client.post("/v1/analyze", headers={"Origin": "https://app.example"}, **_upload())
        fetch_same = await client.get("/v1/models", headers={"Sec-Fetch-Site": "same-origin"})
        curl = await client.post("/v1/analyze", **_upload())  # no Origin, no Sec-Fetch-*: not a browser
        page = await client.get("/", headers={"Sec-Fetch-Site": "cross-site"})  # a link to the page
    for refused in (evil, null, other_port, no_origin):
        assert refused.status_code == 403
        assert refused.json()["error"]["type"] == "permission_error"
        assert "Cross-site requests are refused" in refused.json()["error"]["message"]
    assert [r.status_code for r in (same_origin, listed, fetch_same, curl)] == [200, 200, 200, 200]
    assert page.status_code in (200, 404)  # served (404 only where the web files are not built)


async def test_with_auth_the_credential_decides_not_the_origin(make_client):
    settings = Settings(guard=GuardSettings(api_keys=(SecretStr("k" * 32),)))
    async with make_client(FakeEngine(), settings) as client:
        response = await client.post(
            "/v1/analyze", headers={"Origin": "https://tool.example", "X-API-Key": "k" * 32}, **_upload()
        )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("127.0.0.1:8080", 200),
        ("localhost:8080", 200),
        ("LOCALHOST", 200),
        ("[::1]:8080", 200),
        ("localhost.:8080", 200),
        ("attacker.example", 400),  # DNS rebinding: the attacker's name now resolves to 127.0.0.1
        ("attacker.example:8080", 400),
        ("127.0.0.1.attacker.example", 400),
    ],
)
async def test_loopback_server_answers_only_to_loopback_host_names(make_client, host, status):
    async with make_client(FakeEngine()) as client:
        response = await client.get("/v1/models", headers={"Host": host})
        probe = await client.get("/readyz", headers={"Host": host})
    assert response.status_code == status
    assert probe.status_code == status
    if status == 400:
        assert "Unknown Host header" in response.json()["error"]["message"]


async def test_host_allow_list_setting_and_non_loopback_default(make_client):
    listed = Settings(server=ServerSettings(allowed_hosts=("glimpse.example", "*.corp.example")))
    public = Settings(server=ServerSettings(host="0.0.0.0"))  # noqa: S104 - a setting, nothing is bound
    async with make_client(FakeEngine(), listed) as client:
        named = await client.get("/v1/models", headers={"Host": "glimpse.example:443"})
        sub = await client.get("/v1/models", headers={"Host": "a.corp.example"})
        loopback = await client.get("/v1/models", headers={"Host": "localhost"})
    async with make_client(FakeEngine(), public) as client:
        anything = await client.get("/v1/models", headers={"Host": "10.1.2.3:8080"})
    assert [named.status_code, sub.status_code, loopback.status_code] == [200, 200, 400]
    assert anything.status_code == 200
