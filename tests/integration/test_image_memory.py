"""Decoded-image memory through the app: sized before decode, bounded in flight, freed once taken."""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field

import pytest
from PIL import Image
from tests.fakes import FakeEngine
from tests.images import data_url, png_b64

from glimpse.config import MediaSettings, Settings
from glimpse.engine.protocol import GenerationRequest, TokenEvent
from glimpse.errors import Overloaded, RequestTooLarge


def _is_closed(image: Image.Image) -> bool:
    try:
        image.getpixel((0, 0))
    except ValueError:
        return True
    return False


@dataclass
class ClosedCheckingEngine(FakeEngine):
    """Records, a moment after its first event, whether the request's images were already freed.

    A moment: the result cache's single-flight pulls events ahead of the caller.
    """

    closed_after_first: list[bool] = field(default_factory=list)

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        events = super().submit(request)
        yield await events.__anext__()
        await asyncio.sleep(0.05)
        self.closed_after_first.append(all(_is_closed(part.image) for part in request.images))
        async for event in events:
            yield event


def _big_png(width: int, height: int) -> str:
    """A real, decodable greyscale PNG: megapixels in a few kilobytes."""
    buffer = io.BytesIO()
    Image.new("L", (width, height), 7).save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _chat(*urls: str, **extra: object) -> dict[str, object]:
    content: list[dict[str, object]] = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    content.append({"type": "text", "text": "what?"})
    return {"messages": [{"role": "user", "content": content}], **extra}


def _intake(client):
    return client.app.state.glimpse.intake


async def test_large_images_are_refused_from_their_headers_before_any_decode(make_client, monkeypatch):
    """F5: four 20-megapixel images in a ~100 KB body were decoded (gigabytes) before any refusal."""
    import glimpse.media.intake as intake_module

    decoded: list[int] = []
    real = intake_module.decode_image
    monkeypatch.setattr(intake_module, "decode_image", lambda data, s: decoded.append(1) or real(data, s))
    engine = FakeEngine()
    big = _big_png(5000, 4000)
    async with make_client(engine) as client:
        response = await client.post("/v1/chat/completions", json=_chat(big, big, big, big))
        assert _intake(client).budget.in_use == 0
    assert response.status_code == 413, response.text
    assert "80000000 pixels in all" in response.json()["error"]["message"]
    assert decoded == []
    assert engine.requests == []


@pytest.mark.parametrize("stream", [False, True])
async def test_chat_images_are_freed_once_the_engine_has_them(make_client, stream):
    engine = ClosedCheckingEngine()
    async with make_client(engine) as client:
        response = await client.post("/v1/chat/completions", json=_chat(data_url(), stream=stream))
        assert _intake(client).budget.in_use == 0
    assert response.status_code == 200, response.text
    assert engine.closed_after_first == [True]  # freed after the first event, long before the last


async def test_infer_images_are_freed_once_the_engine_has_them(make_client):
    engine = ClosedCheckingEngine()
    async with make_client(engine) as client:
        response = await client.post("/infer", json={"image": png_b64(), "text": "what?"})
        upload = await client.post(
            "/v1/analyze",
            files={"image": ("a.png", base64.b64decode(png_b64((40, 40))), "image/png")},
            data={"question": "what?"},
        )
        assert _intake(client).budget.in_use == 0
    assert (response.status_code, upload.status_code) == (200, 200), response.text + upload.text
    assert engine.closed_after_first == [True, True]


async def test_the_budget_comes_back_when_the_engine_refuses(make_client):
    engine = FakeEngine(raise_on_submit=Overloaded("full", retry_after=1))
    async with make_client(engine) as client:
        response = await client.post("/v1/chat/completions", json=_chat(data_url()))
        assert _intake(client).budget.in_use == 0
    assert response.status_code == 503


async def test_a_request_that_cannot_get_pixel_room_in_time_is_a_503_with_retry_after(make_client):
    media = MediaSettings(max_pixels_in_flight=10_000, max_request_pixels=10_000, pixel_wait_s=0.05)
    engine = FakeEngine()
    async with make_client(engine, Settings(media=media)) as client:
        held = await _intake(client).budget.acquire(9_000, 0)  # other requests' images in flight
        refused = await client.post("/v1/chat/completions", json=_chat(data_url((96, 64))))
        held.release()
        served = await client.post("/v1/chat/completions", json=_chat(data_url((96, 64))))
    assert refused.status_code == 503, refused.text
    assert int(refused.headers["retry-after"]) > 0
    assert served.status_code == 200, served.text
    assert len(engine.requests) == 1


@dataclass
class SizeJudgingEngine(FakeEngine):
    """An engine whose token budget is judged from image sizes: more than 10,000 pixels do not fit."""

    judged: list[tuple[list[tuple[int, int]], int]] = field(default_factory=list)

    def check_image_sizes(self, sizes: Sequence[tuple[int, int]], max_new_tokens: int) -> None:
        self.judged.append((list(sizes), max_new_tokens))
        if sum(w * h for w, h in sizes) > 10_000:
            raise RequestTooLarge("The images alone take too many tokens.")


async def test_the_engines_token_budget_is_checked_from_the_headers_before_any_decode(
    make_client, monkeypatch
):
    """F5: images were decoded and preprocessed before the token budget refused them."""
    import glimpse.media.intake as intake_module

    decoded: list[int] = []
    real = intake_module.decode_image
    monkeypatch.setattr(intake_module, "decode_image", lambda data, s: decoded.append(1) or real(data, s))
    engine = SizeJudgingEngine()
    too_big = base64.b64decode(png_b64((200, 100)))
    async with make_client(engine) as client:
        chat = await client.post("/v1/chat/completions", json=_chat(data_url((200, 100)), max_tokens=9))
        infer = await client.post("/infer", json={"image": png_b64((200, 100)), "text": "what?"})
        upload = await client.post(
            "/v1/analyze", files={"image": ("a.png", too_big, "image/png")}, data={"question": "what?"}
        )
        assert decoded == []
        fits = await client.post("/v1/chat/completions", json=_chat(data_url((50, 40))))
        assert _intake(client).budget.in_use == 0
    assert [chat.status_code, infer.status_code, upload.status_code] == [413] * 3, chat.text
    assert "too many tokens" in chat.json()["error"]["message"]
    assert engine.judged[0] == ([(200, 100)], 9)
    assert engine.judged[1][0] == [(200, 100)]
    assert fits.status_code == 200
    assert len(engine.requests) == 1
