"""Test images built in code, so the suite ships no binary fixtures."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def solid(
    fmt: str = "PNG", size: tuple[int, int] = (32, 24), colour: object = RED, mode: str = "RGB"
) -> bytes:
    return encode(Image.new(mode, size, colour), fmt)


def half_red_half_blue(size: tuple[int, int] = (40, 20)) -> Image.Image:
    """Left half red, right half blue: shows which way a rotation went."""
    image = Image.new("RGB", size, BLUE)
    image.paste(RED, (0, 0, size[0] // 2, size[1]))
    return image


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int, extra_chunks: bytes = b"", pixel_bytes: int = 1024) -> bytes:
    """A tiny, valid-looking 8-bit greyscale PNG; the header may declare any canvas size.

    ``pixel_bytes`` of zeros are compressed into the IDAT, whatever the canvas needs.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * pixel_bytes, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + extra_chunks
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def compressed_chunk(kind: bytes, keyword: bytes, size: int) -> bytes:
    """A zTXt/iCCP chunk whose payload inflates to ``size`` bytes."""
    return _chunk(kind, keyword + b"\x00\x00" + zlib.compress(b"A" * size, 9))


def animated(fmt: str, colours: tuple[tuple[int, int, int], ...] = (RED, BLUE)) -> bytes:
    frames = [Image.new("RGB", (16, 16), colour) for colour in colours]
    return encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
