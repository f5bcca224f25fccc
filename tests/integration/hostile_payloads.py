"""Hostile file bodies built in code, so the suite ships no binary fixtures.

Each builder returns bytes that try one specific trick on image intake: a
header that lies about the canvas, a metadata chunk that inflates far, a file
of another type wearing an image's name, a file that is two things at once.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib

from PIL import Image

__all__ = [
    "EXE_HEADER",
    "HTML_PAGE",
    "PDF_DOC",
    "SVG_WITH_SCRIPT",
    "gif_bytes",
    "image_bytes",
    "jpeg_bytes",
    "jpeg_html_polyglot",
    "jpeg_with_html_comment",
    "png_bad_crc",
    "png_declaring",
    "png_with_compressed_chunk",
    "truncated_jpeg",
    "zip_bytes",
]

HTML_PAGE = b"<!DOCTYPE html><html><body><script>alert(document.cookie)</script></body></html>"
SVG_WITH_SCRIPT = (
    b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64">'
    b"<script>fetch('/v1/models').then(r => r.text()).then(alert)</script>"
    b'<rect width="64" height="64" fill="red"/></svg>'
)
PDF_DOC = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
# A DOS/PE executable starts with "MZ" and names its PE header offset at 0x3C.
EXE_HEADER = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00\x00\x00\xff\xff\x00\x00" + b"\x00" * 44 + b"PE\x00\x00"


def image_bytes(fmt: str, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, "red" if mode == "RGB" else 128).save(buffer, fmt)
    return buffer.getvalue()


def jpeg_bytes(size: tuple[int, int] = (64, 48)) -> bytes:
    return image_bytes("JPEG", size)


def gif_bytes() -> bytes:
    return image_bytes("GIF", mode="P")


def truncated_jpeg() -> bytes:
    """A real JPEG cut off halfway through its entropy-coded data."""
    buffer = io.BytesIO()
    image = Image.effect_noise((256, 256), 64).convert("RGB")
    image.save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    return data[: len(data) // 2]


def jpeg_html_polyglot() -> bytes:
    """JPEG magic (SOI + APP0 marker) followed by an HTML page: sniffs as JPEG, renders as HTML."""
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + HTML_PAGE


def jpeg_with_html_comment() -> bytes:
    """A well-formed JPEG whose COM segment carries HTML: an image first, and decoded as one."""
    data = jpeg_bytes()
    comment = HTML_PAGE
    segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
    return data[:2] + segment + data[2:]


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", b"not really")
    return buffer.getvalue()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_declaring(width: int, height: int, extra_chunks: bytes = b"") -> bytes:
    """A tiny 8-bit greyscale PNG whose header may declare any canvas (a decompression bomb's face)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\x00" * width for _ in range(min(height, 64))) if width <= 4096 else b""
    idat = zlib.compress(rows or b"\x00" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + extra_chunks
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def png_with_compressed_chunk(kind: bytes, inflated_size: int) -> bytes:
    """A valid 64x64 PNG carrying a zTXt or iCCP chunk that inflates to ``inflated_size`` bytes."""
    chunk = _chunk(kind, b"bomb\x00\x00" + zlib.compress(b"A" * inflated_size, 9))
    return png_declaring(64, 64, chunk)


def png_bad_crc() -> bytes:
    """A real PNG with one flipped bit in the IHDR checksum."""
    data = bytearray(image_bytes("PNG"))
    data[29] ^= 0x01  # 8 signature + 4 length + 4 type + 13 IHDR payload = CRC at 29..32
    return bytes(data)
