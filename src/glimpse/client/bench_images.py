"""Synthetic images that differ from request to request for the price of one stripe.

A server that caches by image content (vLLM's and SGLang's multimodal and prefix
caches ignore ``Cache-Control``) answers a repeated image faster than a new one, so
a benchmark that repeats its image flatters it. Re-encoding a whole 1024 px noise
image per request costs the client about 10 ms as JPEG and 0.4 s as PNG, which
would skew what it measures. So the image is encoded once and cut where its bottom
stripe starts; each request encodes only a new stripe and appends it:

- JPEG: the base carries a restart marker after every MCU row, so the last row's
  entropy-coded data is byte-aligned and independent of the rows above (DC
  prediction restarts). The stripe encoded alone with the same quality and
  subsampling yields exactly that data: the result is byte for byte what Pillow
  writes for the whole image.
- PNG: the rows above are deflated once and flushed to a byte boundary; the stripe
  follows as stored deflate blocks in an IDAT chunk of its own, with the zlib
  Adler-32 continued from the fixed rows.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass

from PIL import Image

__all__ = ["STRIPE_ROWS", "StripedImage", "striped_image"]

#: With 4:2:0 subsampling a JPEG MCU is 16x16 px; PNG uses the same stripe so both vary alike.
STRIPE_ROWS = 16
JPEG_QUALITY = 90
_RESTART = re.compile(rb"\xff[\xd0-\xd7]")
_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_STORED_MAX = 0xFFFF


@dataclass(slots=True, frozen=True)
class StripedImage:
    """An RGB image encoded up to its bottom stripe; :meth:`tail` encodes a stripe after it."""

    fmt: str
    width: int
    stripe_top: int
    stripe_height: int
    fixed: bytes
    #: PNG only: the Adler-32 of the uncompressed rows in ``fixed``.
    adler: int = 1

    @property
    def stripe_bytes(self) -> int:
        return self.width * self.stripe_height * 3

    def tail(self, stripe_rgb: bytes) -> bytes:
        """The bytes that follow :attr:`fixed` when the stripe holds ``stripe_rgb`` (raw RGB rows)."""
        if len(stripe_rgb) != self.stripe_bytes:
            raise ValueError(f"a stripe is {self.stripe_bytes} bytes, got {len(stripe_rgb)}")
        if self.fmt == "jpeg":
            stripe = Image.frombytes("RGB", (self.width, self.stripe_height), stripe_rgb)
            return _entropy_data(_jpeg(stripe)) + _EOI
        return _png_tail(stripe_rgb, self.width * 3, self.adler)

    def encode(self, stripe_rgb: bytes) -> bytes:
        return self.fixed + self.tail(stripe_rgb)


def striped_image(image: Image.Image, fmt: str) -> StripedImage:
    """Encode ``image`` (RGB) once as ``"jpeg"`` or ``"png"``, ready for new bottom stripes."""
    if image.mode != "RGB":
        raise ValueError(f"need an RGB image, got {image.mode}")
    width, height = image.size
    top = (height - 1) // STRIPE_ROWS * STRIPE_ROWS
    if fmt == "jpeg":
        whole = _jpeg(image, restart_marker_rows=1)
        start = _entropy_start(whole)
        cut = max((marker.end() for marker in _RESTART.finditer(whole, start)), default=start)
        return StripedImage(fmt, width, top, height - top, whole[:cut])
    if fmt == "png":
        fixed, adler = _png_head(image, top)
        return StripedImage(fmt, width, top, height - top, fixed, adler)
    raise ValueError(f"unknown image format {fmt!r}")


def _jpeg(image: Image.Image, **options: int) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling="4:2:0", **options)
    return buf.getvalue()


def _entropy_start(data: bytes) -> int:
    """Where the scan's entropy-coded data begins: after the SOS segment."""
    sos = data.index(b"\xff\xda")
    return sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")


def _entropy_data(data: bytes) -> bytes:
    if not data.endswith(_EOI):
        raise ValueError("the JPEG encoder did not end with EOI")
    return data[_entropy_start(data) : -len(_EOI)]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _scanlines(rgb: bytes, row_bytes: int) -> bytes:
    """Each row behind filter type 0 (none): noise gains nothing from filtering."""
    return b"".join(b"\x00" + rgb[i : i + row_bytes] for i in range(0, len(rgb), row_bytes))


def _png_head(image: Image.Image, top: int) -> tuple[bytes, int]:
    width, height = image.size
    raw = _scanlines(image.crop((0, 0, width, top)).tobytes(), width * 3)
    deflate = zlib.compressobj()
    data = deflate.compress(raw) + deflate.flush(zlib.Z_SYNC_FLUSH)  # byte-aligned, not final
    header = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return _PNG_SIGNATURE + header + _png_chunk(b"IDAT", data), zlib.adler32(raw)


def _png_tail(stripe_rgb: bytes, row_bytes: int, adler: int) -> bytes:
    raw = _scanlines(stripe_rgb, row_bytes)
    blocks = []
    for start in range(0, len(raw), _STORED_MAX):
        block = raw[start : start + _STORED_MAX]
        final = start + _STORED_MAX >= len(raw)
        blocks.append(struct.pack("<BHH", final, len(block), len(block) ^ 0xFFFF) + block)
    data = b"".join(blocks) + struct.pack(">I", zlib.adler32(raw, adler))
    return _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")
