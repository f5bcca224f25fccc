"""Building blocks of the hostile-input suite: settings, credentials and request senders.

A ``Hostile`` case is one attack: how to send it, the settings of the server it
is sent to, and the exact error the server must answer with. Senders are small
closures over an ``httpx.AsyncClient`` so the table in ``test_hostile_inputs.py``
reads as a list of attacks, not as request plumbing.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import httpx
import jwt
from pydantic import SecretStr
from tests.images import png_b64

from glimpse.config import GuardSettings, MediaSettings, ServerSettings, Settings

__all__ = [
    "BLOCKING",
    "DEFAULT",
    "JWT_SECRET",
    "JWT_SERVER",
    "KEY_A",
    "KEY_B",
    "KEYED",
    "RATE_LIMITED",
    "SMALL_BODY",
    "SMALL_BODY_LIMIT",
    "URLS_ON",
    "ClientFactory",
    "Hostile",
    "Send",
    "assert_no_leak",
    "chat",
    "chat_image",
    "good_request",
    "infer",
    "infer_b64",
    "post_raw",
    "tampered_token",
    "token",
    "unsigned_token",
    "upload",
    "with_headers",
]

Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
#: The ``make_client`` fixture of ``conftest.py``.
ClientFactory = Callable[..., AbstractAsyncContextManager[httpx.AsyncClient]]

KEY_A = "glk_hostile-suite-key-a-0123456789abcdef0123456789"
KEY_B = "glk_hostile-suite-key-b-0123456789abcdef0123456789"
JWT_SECRET = "hostile-suite-jwt-secret-" + "0123456789abcdef" * 4  # long enough for HS512 too
SMALL_BODY_LIMIT = 64 * 1024

DEFAULT = Settings()
URLS_ON = Settings(media=MediaSettings(allow_urls=True))
SMALL_BODY = Settings(server=ServerSettings(max_body_bytes=SMALL_BODY_LIMIT))
JWT_SERVER = Settings(guard=GuardSettings(jwt_secret=SecretStr(JWT_SECRET)))
KEYED = Settings(guard=GuardSettings(api_keys=(SecretStr(KEY_A), SecretStr(KEY_B))))
RATE_LIMITED = Settings(
    guard=GuardSettings(api_keys=(SecretStr(KEY_A), SecretStr(KEY_B)), rate_limit_per_minute=3)
)
BLOCKING = Settings(guard=GuardSettings(prompt_guard="block"))

# What a leaked stack trace or source location looks like in a response body.
_LEAK = re.compile(r"Traceback|File \"|site-packages|\.py\b|/(?:work|home|usr|tmp|etc)/[\w./-]+")


def assert_no_leak(text: str) -> None:
    match = _LEAK.search(text)
    assert match is None, f"response leaks internals ({match.group(0)!r}): {text[:500]}"


@dataclass(frozen=True)
class Hostile:
    """One attack and the exact refusal it must get."""

    send: Send
    status: int
    code: str
    fragment: str
    settings: Settings = DEFAULT
    #: Credentials the follow-up good request needs on this server.
    good_headers: Mapping[str, str] = field(default_factory=dict)
    #: Requests the engine may have seen before the follow-up (only the rate-limit case sends good ones).
    reached_engine: int = 0
    #: Extra response headers that must be present (name -> exact value, or "" for any value).
    headers: Mapping[str, str] = field(default_factory=dict)


def token(secret: str = JWT_SECRET, algorithm: str = "HS256", **claims: Any) -> str:
    """A signed JWT for subject ``tester``, valid for an hour unless ``claims`` say otherwise."""
    payload: dict[str, Any] = {"sub": "tester", "exp": int(time.time()) + 3600, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, algorithm=algorithm)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token() -> str:
    """An ``alg: none`` token: valid claims, no signature at all."""
    header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64url(json.dumps({"sub": "admin", "exp": int(time.time()) + 3600}).encode())
    return f"{header}.{payload}."


def tampered_token() -> str:
    """A correctly signed token whose payload was then swapped for one naming another subject."""
    header, _payload, signature = token().split(".")
    forged = _b64url(json.dumps({"sub": "admin", "exp": int(time.time()) + 3600}).encode())
    return f"{header}.{forged}.{signature}"


def good_request(client: httpx.AsyncClient, headers: Mapping[str, str]) -> Awaitable[httpx.Response]:
    """A well-formed /infer that must succeed; a fresh question each time, so it reaches the engine."""
    question = f"What colour is this? ({time.monotonic_ns()})"
    return client.post("/infer", json={"image": png_b64(), "text": question}, headers=dict(headers))


def infer(image: Any, text: Any = "What is this?", **extra: Any) -> Send:
    body = {"image": image, "text": text, **extra}
    return lambda client: client.post("/infer", json=body)


def infer_b64(data: bytes) -> Send:
    return infer(base64.b64encode(data).decode())


def upload(data: bytes, filename: str = "photo.jpg", mime: str = "image/jpeg") -> Send:
    """A multipart /v1/analyze upload that claims, by name and type, to be a JPEG."""
    return lambda client: client.post(
        "/v1/analyze", files={"image": (filename, data, mime)}, data={"question": "What is this?"}
    )


def chat(body: Any) -> Send:
    return lambda client: client.post("/v1/chat/completions", json=body)


def chat_image(url: str, text: str = "Describe the image.", **extra: Any) -> Send:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": text}]
    return chat({"messages": [{"role": "user", "content": content}], **extra})


def post_raw(path: str, content: bytes, content_type: str = "application/json") -> Send:
    return lambda client: client.post(path, content=content, headers={"Content-Type": content_type})


def with_headers(send_body: dict[str, Any], headers: Mapping[str, str], path: str = "/infer") -> Send:
    return lambda client: client.post(path, json=send_body, headers=dict(headers))
