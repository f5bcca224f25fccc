"""Small images built in code, as bytes and base64, for tests."""

from __future__ import annotations

import base64
import io

from PIL import Image


def png_bytes(size: tuple[int, int] = (96, 64), colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def png_b64(size: tuple[int, int] = (96, 64), colour: tuple[int, int, int] = (200, 40, 40)) -> str:
    return base64.b64encode(png_bytes(size, colour)).decode()


def data_url(size: tuple[int, int] = (96, 64), colour: tuple[int, int, int] = (200, 40, 40)) -> str:
    return "data:image/png;base64," + png_b64(size, colour)
