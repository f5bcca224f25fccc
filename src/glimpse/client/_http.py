"""HTTP plumbing shared by ``glimpse bench`` and ``glimpse batch``.

Both commands talk to a server they do not control (Glimpse, vLLM, SGLang), so
the rules for base URLs, auth, pool sizes and retry delays live in one place.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

import httpx

from glimpse import openai_wire

__all__ = [
    "RetryPolicy",
    "build_client",
    "error_message",
    "normalize_base_url",
]

#: Statuses that mean "come back later" rather than "this request is wrong".
RETRY_STATUSES = frozenset({429, 503})


def normalize_base_url(url: str) -> str:
    """Accept ``http://host:port``, with or without ``/`` or ``/v1``, as users paste both."""
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    return url.removesuffix("/v1")


def build_client(
    base_url: str,
    *,
    api_key: str | None,
    max_connections: int | None,
    timeout_s: float,
    headers: dict[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """One pooled client per run: a pool smaller than the load would queue requests
    inside the client and show up as server latency."""
    headers = {"User-Agent": "glimpse-client", **(headers or {})}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx.AsyncClient(
        base_url=normalize_base_url(base_url),
        headers=headers,
        limits=limits,
        timeout=httpx.Timeout(timeout_s),
        transport=transport,
    )


@dataclass(slots=True, frozen=True)
class RetryPolicy:
    """Bounded retries: a server that keeps saying 503 must not stall a batch forever."""

    attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Delay before retry number ``attempt`` (1-based).

        With ``Retry-After`` we wait at least that long plus a little jitter, so that
        many clients told the same number do not return in the same millisecond.
        Without it, exponential backoff with full jitter.
        """
        if retry_after is not None:
            base = min(retry_after, self.max_delay_s)
            return base + rng.uniform(0.0, 0.1 * base + 0.1)
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return rng.uniform(0.0, ceiling)


def error_message(response: httpx.Response) -> str:
    """A one-line reason from an error body, whichever error shape the server uses."""
    text = response.text
    try:
        message = openai_wire.error_text(json.loads(text))
    except (ValueError, RecursionError):
        message = ""
    return f"{response.status_code}: {(message or text.strip() or response.reason_phrase)[:300]}"
