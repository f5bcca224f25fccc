"""Name a file's format from its first bytes.

Intake trusts neither file names nor declared MIME types: both are chosen by the
sender. Magic numbers are chosen by the format, so they are the first of two
opinions (Pillow's own identification is the second, see ``decode.py``). Names
follow Pillow's ``Image.format`` spelling so the two can be compared directly;
formats Pillow does not decode (PDF, SVG, HTML) are named too, so that refusals
can say what was sent.
"""

from __future__ import annotations

import re

__all__ = ["contains_markup", "sniff_format", "webp_size"]

_PREFIXES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"%PDF-", "PDF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"BM", "BMP"),
)

# ISO base media (HEIF family) brands, found at bytes 8..12 after a "ftyp" box type.
_FTYP_BRANDS: dict[bytes, str] = {
    b"avif": "AVIF",
    b"avis": "AVIF",
    b"heic": "HEIF",
    b"heix": "HEIF",
    b"mif1": "HEIF",
    b"msf1": "HEIF",
}

# Tags that make a file dangerous if a browser ever sniffs it as a document.
_MARKUP = re.compile(
    rb"<(?:!doctype|html|head|body|script|svg|iframe|object|embed|\?xml)[\s>/]", re.IGNORECASE
)

# How far into a text file to look for markup: enough for a BOM, an XML
# declaration, a doctype and some comments, without scanning megabytes.
_TEXT_WINDOW = 1024


def sniff_format(data: bytes) -> str | None:
    """Return the format the bytes announce ("JPEG", "PNG", "WEBP", "SVG", ...), or None.

    A match says only what the file claims to be; whether it is a well-formed
    file of that format is for the decoder to find out.
    """
    for prefix, name in _PREFIXES:
        if data.startswith(prefix):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if len(data) >= 12 and data[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(data[8:12])
    return _sniff_markup(data[:_TEXT_WINDOW])


def _sniff_markup(head: bytes) -> str | None:
    text = head.lstrip(b"\xef\xbb\xbf").lstrip().lower()
    if text.startswith(b"%pdf-") or b"%pdf-" in text:
        return "PDF"
    if b"<svg" in text:
        return "SVG"
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body", b"<script")) or b"<html" in text:
        return "HTML"
    if text.startswith(b"<?xml"):
        return "XML"
    return None


def webp_size(data: bytes) -> tuple[int, int] | None:
    """Canvas size a WebP file declares (lossy VP8, lossless VP8L or extended VP8X), or None.

    The first chunk after ``RIFF....WEBP`` is one of the three; each stores the size
    at a fixed offset (RFC 9649, sections 2.5 and 2.7).
    """
    if len(data) < 30 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        return None
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":  # key frame start code
        return int.from_bytes(data[26:28], "little") & 0x3FFF, int.from_bytes(data[28:30], "little") & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:  # lossless signature
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def contains_markup(data: bytes) -> bool:
    """Whether HTML/SVG/XML markup appears anywhere in ``data`` (a polyglot's second face)."""
    return _MARKUP.search(data) is not None
