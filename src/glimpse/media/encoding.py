"""Strict parsing of base64 payloads and ``data:`` URLs.

Lenient base64 decoding (Python's default) silently skips characters outside the
alphabet, so garbage can decode to *something*; here every character must be in
the standard alphabet with correct padding. Line breaks are the one tolerance,
because ``base64`` on the command line wraps at 76 columns.

A data URL's declared MIME type is parsed but not believed: the type is always
detected from the decoded bytes.
"""

from __future__ import annotations

import base64
import binascii
import re

from glimpse.errors import ImageTooLarge, InvalidImage

__all__ = ["decode_base64", "encoded_size_limit", "is_data_url", "parse_data_url"]

_DATA_URL = re.compile(
    r"data:(?P<mime>[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+)"
    r"(?P<params>(?:;[a-z0-9!#$&^_.+-]+=[^;,]*)*)"
    r";base64,(?P<payload>.*)",
    re.IGNORECASE | re.DOTALL,
)
_LINE_BREAKS = str.maketrans("", "", "\r\n")


def is_data_url(ref: str) -> bool:
    return ref[:5].lower() == "data:"


def encoded_size_limit(max_bytes: int) -> int:
    """Longest base64 text that can decode to at most ``max_bytes`` (before line breaks)."""
    return 4 * ((max_bytes + 2) // 3)


def decode_base64(payload: str, max_bytes: int) -> bytes:
    """Decode standard, padded base64; refuse oversize input before decoding it."""
    text = payload.strip().translate(_LINE_BREAKS)
    if not text:
        raise InvalidImage("The image data is empty.")
    if len(text) > encoded_size_limit(max_bytes):
        raise ImageTooLarge(f"The image is larger than {max_bytes} bytes, the limit.")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidImage(
            "The image is not valid base64 (standard alphabet A-Z a-z 0-9 + / with '=' padding)."
        ) from exc


def parse_data_url(ref: str) -> tuple[str, str]:
    """Split ``data:<mime>[;param=value]*;base64,<payload>`` into (declared mime, payload)."""
    match = _DATA_URL.fullmatch(ref.strip())
    if match is None:
        raise InvalidImage("The data URL is malformed; expected data:<mime type>;base64,<base64 data>.")
    return match["mime"].lower(), match["payload"]
