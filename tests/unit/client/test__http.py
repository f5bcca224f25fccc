import random

import httpx
import pytest

from glimpse.client._http import (
    RetryPolicy,
    build_client,
    error_message,
    normalize_base_url,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://h:8080", "http://h:8080"),
        ("http://h:8080/", "http://h:8080"),
        ("http://h:8080/v1", "http://h:8080"),
        ("http://h:8080/v1/", "http://h:8080"),
        ("h:8080", "http://h:8080"),
    ],
)
def test_normalize_base_url(given, expected):
    assert normalize_base_url(given) == expected


def test_delay_honours_retry_after_with_bounded_jitter():
    policy = RetryPolicy(max_delay_s=30)
    rng = random.Random(1)
    delays = [policy.delay(1, 4.0, rng) for _ in range(200)]
    assert all(4.0 <= d <= 4.0 + 0.5 for d in delays)
    assert len(set(delays)) > 100  # jittered, not a constant
    assert policy.delay(1, 3600.0, rng) <= 30 * 1.1 + 0.1  # capped


def test_delay_without_retry_after_is_exponential_full_jitter():
    policy = RetryPolicy(base_delay_s=0.5, max_delay_s=4)
    rng = random.Random(2)
    for attempt, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (8, 4.0)]:
        delays = [policy.delay(attempt, None, rng) for _ in range(100)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"error": {"message": "queue full", "code": "overloaded"}}, "503: queue full"),
        ({"error": "plain"}, "503: plain"),
        ({"detail": "nope"}, "503: nope"),
    ],
)
def test_error_message_reads_common_shapes(body, expected):
    assert error_message(httpx.Response(503, json=body)) == expected


def test_error_message_falls_back_to_text_or_reason():
    assert error_message(httpx.Response(502, text="bad gateway\n")) == "502: bad gateway"
    assert error_message(httpx.Response(500)) == "500: Internal Server Error"


async def test_client_sends_bearer_key_to_normalized_base():
    seen = []

    def handler(request):
        seen.append(request)
        return httpx.Response(200)

    client = build_client(
        "http://h:1/v1/", api_key="k", max_connections=8, timeout_s=5, transport=httpx.MockTransport(handler)
    )
    async with client:
        await client.get("/v1/models")
    assert str(seen[0].url) == "http://h:1/v1/models"
    assert seen[0].headers["authorization"] == "Bearer k"
