"""Pictures and requests for the tests that check the image reaches the trained tiny model."""

from __future__ import annotations

import base64
import io
from typing import Any

import httpx
from PIL import Image

from glimpse.engine.tiny_task import Picture, draw, encode

COLOUR_EN = {"red": "red", "green": "green", "blue": "blue"}


def picture(
    color: str = "red",
    shape: str = "circle",
    *,
    count: int = 1,
    position: str | None = "center",
    size: tuple[int, int] = (240, 180),
    seed: int = 7,
) -> Picture:
    return Picture(color, shape, count, position if count == 1 else None, size[0], size[1], seed)


def image(pic: Picture) -> Image.Image:
    return draw(pic)


def data(pic: Picture, fmt: str = "PNG", quality: int = 90) -> bytes:
    return encode(draw(pic), fmt, quality)


def save(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    out = io.BytesIO()
    img.save(out, fmt, **kwargs)
    return out.getvalue()


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(raw).decode()


def chat(base_url: str, messages: list[dict[str, Any]], **extra: Any) -> str:
    body = {"model": "tiny", "messages": messages, "max_tokens": 24, "temperature": 0, **extra}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


def user(question: str, *images: bytes, mime: str = "image/png") -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"type": "image_url", "image_url": {"url": data_url(raw, mime)}} for raw in images
    ]
    return {"role": "user", "content": [*parts, {"type": "text", "text": question}]}


def infer(base_url: str, raw: bytes, question: str) -> str:
    payload = {"image": base64.b64encode(raw).decode(), "text": question, "max_new_tokens": 24}
    response = httpx.post(f"{base_url}/infer", json=payload, timeout=120)
    assert response.status_code == 200, response.text
    return str(response.json()["response"])
