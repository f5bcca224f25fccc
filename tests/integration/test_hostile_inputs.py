"""Hostile inputs against the whole app: each gets its exact refusal, and the server stays well.

Every case asserts the status, the stable ``error.code`` and the part of the
message that tells the client what to fix; that the body leaks no traceback or
path; that the engine never saw the request; and that the very next good
request on the same server is answered. The table of attacks is in
``hostile_cases.py`` (the proof section of issue 4, one row per attack); the
tests below it cover what a table row cannot: documented acceptances and
redirects, which need a stub HTTP transport.
"""

from __future__ import annotations

import hashlib

import httpx
import pytest
from tests.fakes import FakeEngine
from tests.images import png_b64, png_bytes
from tests.integration import hostile_payloads as payload
from tests.integration.hostile_cases import CASES
from tests.integration.hostile_requests import (
    URLS_ON,
    ClientFactory,
    Hostile,
    assert_no_leak,
    chat_image,
    good_request,
    upload,
)

from glimpse.config import MediaSettings
from glimpse.errors import InvalidImage
from glimpse.media import ImageIntake

# Every hostile request must leave the engine idle (the make_client watchdog): no hung request,
# no leaked slot.


@pytest.mark.parametrize("case", CASES)
async def test_hostile_input_is_refused_and_the_server_keeps_serving(
    make_client: ClientFactory, case: Hostile
) -> None:
    engine = FakeEngine()
    async with make_client(engine, case.settings) as client:
        response = await case.send(client)
        seen_by_engine = len(engine.requests)
        good = await good_request(client, case.good_headers)

    assert response.status_code == case.status, response.text
    error = response.json()["error"]
    assert error["code"] == case.code, error
    assert case.fragment in error["message"], error
    assert_no_leak(response.text)
    for name, value in case.headers.items():
        assert name in response.headers, response.headers
        assert not value or response.headers[name] == value, response.headers
    if "retry-after" in case.headers:  # a bucket of 3 per minute refills one request in 20 s
        assert 1 <= int(response.headers["retry-after"]) <= 20, response.headers
    assert seen_by_engine == case.reached_engine, "the hostile request reached the engine"
    assert good.status_code == 200, good.text
    assert good.json() == {"response": "hello world"}


def test_the_suite_covers_at_least_forty_attacks() -> None:
    assert len(CASES) >= 40


# --- documented acceptances: odd but harmless inputs are served --------------------------------


@pytest.mark.parametrize("declared", ["image/gif", "text/html", "application/octet-stream"])
async def test_data_url_mime_is_not_believed_png_bytes_are_served_as_png(
    make_client: ClientFactory, declared: str
) -> None:
    """The declared type is the sender's claim; the bytes decide (media/encoding.py)."""
    engine = FakeEngine()
    async with make_client(engine) as client:
        response = await chat_image(f"data:{declared};base64,{png_b64()}")(client)
    assert response.status_code == 200, response.text
    (image,) = engine.requests[0].images
    assert image.sha256 == hashlib.sha256(png_bytes()).hexdigest()
    assert image.image.mode == "RGB"


async def test_jpeg_carrying_html_in_a_comment_reaches_the_model_as_pixels_only(
    make_client: ClientFactory,
) -> None:
    """A well-formed JPEG is an image, whatever its comment says: decoded, re-made, metadata dropped."""
    engine = FakeEngine()
    async with make_client(engine) as client:
        response = await upload(payload.jpeg_with_html_comment())(client)
    assert response.status_code == 200, response.text
    (image,) = engine.requests[0].images
    assert image.image.mode == "RGB"
    assert image.image.size == (64, 48)
    assert image.image.info == {}


# --- redirects into the private network ---------------------------------------------------------

PUBLIC_IMAGE_URL = "http://93.184.216.34/cat.png"  # a literal public address: no DNS involved


def _redirecting_transport(location: str, seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.host == "93.184.216.34" and request.url.path == "/cat.png":
            return httpx.Response(302, headers={"Location": location})
        if request.url.host == "93.184.216.34" and request.url.path == "/real.png":
            return httpx.Response(200, content=png_bytes(), headers={"Content-Type": "image/png"})
        return httpx.Response(200, content=b"internal secrets")

    return httpx.MockTransport(handle)


@pytest.mark.parametrize(
    ("location", "fragment"),
    [
        pytest.param("http://127.0.0.1/admin", "not resolve to a public address", id="to-127.0.0.1"),
        pytest.param(
            "http://169.254.169.254/latest/meta-data/", "not resolve to a public address", id="to-metadata"
        ),
        pytest.param("http://[::1]:8080/", "not resolve to a public address", id="to-ipv6-loopback"),
        pytest.param("http://10.0.0.7/", "not resolve to a public address", id="to-10/8"),
        pytest.param("http://2130706433/", "not a canonical IP", id="to-decimal-ip"),
        pytest.param("file:///etc/passwd", "Only http and https", id="to-file-url"),
    ],
)
async def test_redirect_to_a_private_address_is_refused_before_it_is_followed(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch, location: str, fragment: str
) -> None:
    seen: list[httpx.Request] = []
    monkeypatch.setattr(
        "glimpse.api.app.create_fetch_client",
        lambda settings: httpx.AsyncClient(transport=_redirecting_transport(location, seen)),
    )
    engine = FakeEngine()
    async with make_client(engine, URLS_ON) as client:
        response = await chat_image(PUBLIC_IMAGE_URL)(client)
        good = await chat_image(PUBLIC_IMAGE_URL.replace("cat", "real"))(client)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_image"
    assert fragment in error["message"]
    assert "internal secrets" not in response.text
    assert_no_leak(response.text)
    assert [str(r.url) for r in seen[:1]] == [PUBLIC_IMAGE_URL]  # the redirect target was never requested
    assert good.status_code == 200, good.text  # the same path serves a public image fine
    assert len(seen) == 2
    assert len(engine.requests) == 1


async def test_redirect_to_a_name_that_resolves_privately_is_refused() -> None:
    """DNS is checked on every hop: a public name may redirect to a name that points inside."""
    answers = {"images.example.com": ["93.184.216.34"], "intranet.example.com": ["10.20.30.40"]}
    seen: list[httpx.Request] = []

    async def resolver(host: str, port: int) -> list[str]:
        return answers[host]

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(302, headers={"Location": "http://intranet.example.com/secret.png"})

    settings = MediaSettings(allow_urls=True)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as http_client:
        intake = ImageIntake(settings, http_client=http_client, resolver=resolver)
        with pytest.raises(InvalidImage, match="intranet.example.com does not resolve to a public address"):
            await intake.from_reference("http://images.example.com/cat.png")
    assert len(seen) == 1
    assert seen[0].headers["host"] == "images.example.com"
