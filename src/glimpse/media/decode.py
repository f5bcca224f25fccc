"""Turn untrusted bytes into a safe RGB image, or into one of our client errors.

This is blocking work (hashing, parsing, inflating pixels); call it through
``BlockingRunner``, never straight from ``async def``.

Order matters: the format is agreed on (our magic numbers and Pillow's
identification, restricted to the allowed formats) and the declared dimensions
are checked against the limits *before* any pixel data is inflated, so a small
file that announces a huge canvas costs a header parse, not gigabytes.

Animated images (APNG, animated WebP) are accepted and only their first frame is
used: the models take still images, and refusing would break ordinary "GIF-like"
WebP uploads for no gain.

Pillow has its own decompression-bomb check (a warning above
``Image.MAX_IMAGE_PIXELS``, an error above twice that). ``configure_pillow`` keeps
it as a second line of defence that never fires on an image our limits accept,
and makes its warning an exception so that it is translated here rather than
printed or, under ``-W error``, escaping as an unexpected error.
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from glimpse.config import MediaSettings
from glimpse.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from glimpse.media.colour import to_rgb
from glimpse.media.sniff import contains_markup, sniff_format, webp_size

__all__ = ["DecodedImage", "ImageHeader", "configure_pillow", "decode_image", "probe_image"]

logger = logging.getLogger(__name__)

# What Pillow's parsers and decoders raise on malformed input. Anything else is a
# bug in our code, not the client's, and must stay a 500.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    ZeroDivisionError,
    OverflowError,
)
_BOMB_ERRORS = (Image.DecompressionBombError, Image.DecompressionBombWarning)


@dataclass(slots=True, frozen=True)
class DecodedImage:
    """An image that passed intake: RGB, upright, without metadata.

    ``sha256`` is of the original bytes (what the client sent), so it identifies
    the upload for the cache and the audit log; ``width``/``height`` are of
    ``image`` after EXIF orientation; ``format`` is the detected format name.
    """

    image: Image.Image
    sha256: str
    format: str
    width: int
    height: int
    source_bytes: int


@dataclass(slots=True, frozen=True)
class ImageHeader:
    """What an image's header declares, already checked against the per-image limits.

    Nothing has been decoded: this is what a request's pixel budget is decided on,
    before any of its images costs more than a header parse.
    """

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def configure_pillow(max_pixels: int) -> None:
    """Make Pillow's process-wide bomb check agree with our limit (idempotent)."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and max_pixels > current:
        Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.filterwarnings("error", category=Image.DecompressionBombWarning)


def probe_image(data: bytes, settings: MediaSettings) -> ImageHeader:
    """Format and declared size, checked against the per-image limits, without decoding (blocking).

    Pillow's ``open`` reads headers only, except for WebP, whose decoder allocates
    the whole canvas when it is created: its size is read from the RIFF header here.
    """
    if not data:
        raise InvalidImage("The image is empty (0 bytes).")
    if len(data) > settings.max_image_bytes:
        raise ImageTooLarge(f"The image is {len(data)} bytes; the limit is {settings.max_image_bytes} bytes.")
    fmt = _detect_format(data, settings.allowed_formats)
    if fmt == "WEBP":
        size = webp_size(data)
        if size is None:
            raise _undecodable(data, fmt, SyntaxError("no readable VP8/VP8L/VP8X header"))
        width, height = size
    else:
        with _open(data, fmt, settings.max_pixels) as image:
            width, height = image.size
    check_dimensions(width, height, settings)
    return ImageHeader(fmt, width, height)


def decode_image(data: bytes, settings: MediaSettings) -> DecodedImage:
    """Check, decode and normalise one encoded image (blocking); the header is checked first."""
    fmt = probe_image(data, settings).format
    digest = hashlib.sha256(data).hexdigest()
    image = _open(data, fmt, settings.max_pixels)
    with image:
        check_dimensions(image.width, image.height, settings)
        _load(image, data, fmt, settings.max_pixels)
        _apply_orientation(image)
        try:
            rgb = to_rgb(image)
        except ValueError as exc:
            raise UnsupportedMediaType(
                f"The {fmt} image's colour mode {image.mode} is not supported."
            ) from exc
    logger.debug(
        "decoded %s image %dx%d from %d bytes sha256=%s", fmt, rgb.width, rgb.height, len(data), digest
    )
    return DecodedImage(
        image=rgb, sha256=digest, format=fmt, width=rgb.width, height=rgb.height, source_bytes=len(data)
    )


def check_dimensions(width: int, height: int, settings: MediaSettings) -> None:
    """Refuse by declared size; called before the pixel data is read."""
    pixels = width * height
    if pixels > settings.max_pixels:
        raise ImageTooLarge(
            f"The image is {width}x{height} = {pixels} pixels; the limit is {settings.max_pixels} pixels."
        )
    if max(width, height) > settings.max_side:
        raise ImageTooLarge(
            f"The image is {width}x{height}; neither side may be longer than {settings.max_side} pixels."
        )
    if min(width, height) < settings.min_side:
        raise InvalidImage(
            f"The image is {width}x{height}; both sides must be at least {settings.min_side} pixels."
        )


def _detect_format(data: bytes, allowed_formats: tuple[str, ...]) -> str:
    allowed = {name.upper() for name in allowed_formats}
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedMediaType(
            f"The data is not a recognised image; accepted formats: {', '.join(sorted(allowed))}."
        )
    if fmt not in allowed:
        raise UnsupportedMediaType(
            f"{fmt} images are not accepted; accepted formats: {', '.join(sorted(allowed))}."
        )
    return fmt


def _too_many_pixels(max_pixels: int) -> ImageTooLarge:
    return ImageTooLarge(f"The image has more than {max_pixels} pixels, the limit.")


def _open(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    """Parse the header with the one plugin our sniffing chose; no pixels yet."""
    try:
        image = Image.open(io.BytesIO(data), formats=(fmt,))
    except _BOMB_ERRORS as exc:
        raise _too_many_pixels(max_pixels) from exc
    except _DECODE_ERRORS as exc:  # UnidentifiedImageError is an OSError
        raise _undecodable(data, fmt, exc) from exc
    if image.format != fmt:
        image.close()
        raise UnsupportedMediaType(f"The data starts like a {fmt} file but decodes as {image.format}.")
    return image


def _load(image: Image.Image, data: bytes, fmt: str, max_pixels: int) -> None:
    try:
        image.load()
    except _BOMB_ERRORS as exc:
        raise _too_many_pixels(max_pixels) from exc
    except _DECODE_ERRORS as exc:
        raise _undecodable(data, fmt, exc) from exc


def _undecodable(data: bytes, fmt: str, exc: BaseException) -> InvalidImage | UnsupportedMediaType:
    """Broken image bytes are a 400, unless they carry markup: then it is a polyglot, a 415.

    The line cannot be drawn by where decoding stopped (some plugins, WebP's,
    decode the whole file while reading the header), so it is drawn by content.
    """
    logger.debug("cannot decode %s image: %r", fmt, exc)
    if contains_markup(data):
        return UnsupportedMediaType(
            f"The data starts like a {fmt} file but is not a well-formed {fmt} image (it contains markup)."
        )
    if "Decompressed data too large" in str(exc):  # Pillow's cap on text and ICC chunks
        return InvalidImage(f"The {fmt} image has a compressed metadata chunk that expands too far.")
    what = "truncated" if "truncated" in str(exc) else "corrupt or truncated"
    return InvalidImage(f"The {fmt} image is {what} and could not be decoded.")


def _apply_orientation(image: Image.Image) -> None:
    """Rotate per EXIF in place; a broken EXIF block costs the rotation, not the image."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except _DECODE_ERRORS as exc:
        logger.debug("ignoring unreadable EXIF orientation: %r", exc)
