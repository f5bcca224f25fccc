"""Bring any decoded image to plain 8-bit RGB, the one mode the models take.

Pillow's ``convert("RGB")`` is right for most modes but wrong for three kinds:
alpha is dropped (transparent pixels keep whatever colour they hide, often
black), 16-bit and 32-bit greys are clipped at 255 instead of scaled, and
palette images with a transparent index lose their transparency. Those are
handled here; transparency is composited onto white, as a viewer shows it.
"""

from __future__ import annotations

from PIL import Image

__all__ = ["to_rgb"]

_WHITE = (255, 255, 255, 255)
_SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_HAS_ALPHA = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


def to_rgb(image: Image.Image) -> Image.Image:
    """Return a new RGB image with no metadata; ``image`` itself is left alone.

    Raises ``ValueError`` for a mode Pillow cannot convert to RGB.
    """
    rgb = _convert(image)
    if rgb is image:
        rgb = image.copy()
    rgb.info.clear()
    return rgb


def _convert(image: Image.Image) -> Image.Image:
    mode = image.mode
    # Wide greys first: their rare transparent key cannot go through RGBA.
    if mode in _SIXTEEN_BIT:
        return _scale_to_8bit(image.convert("I"), 1 / 257).convert("RGB")
    if mode in ("I", "F"):
        return _wide_grey_to_rgb(image)
    if mode in _HAS_ALPHA or "transparency" in image.info:
        return _flatten(image.convert("RGBA"))
    return image.convert("RGB")


def _flatten(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, _WHITE)
    return Image.alpha_composite(background, rgba).convert("RGB")


def _scale_to_8bit(image: Image.Image, scale: float, offset: float = 0.0) -> Image.Image:
    # ``point`` on I/F images takes only linear maps; Pillow rounds and clips on convert("L").
    return image.point(lambda value: value * scale + offset).convert("L")


def _wide_grey_to_rgb(image: Image.Image) -> Image.Image:
    """32-bit integer or float greys carry no bit depth, so guess it from the range."""
    extrema = image.getextrema()
    low, high = float(extrema[0]), float(extrema[1])  # type: ignore[arg-type]  # one band: two numbers
    if image.mode == "F" and low >= 0 and high <= 1:
        return _scale_to_8bit(image, 255).convert("RGB")
    if low >= 0 and high <= 255:
        return image.convert("L").convert("RGB")
    if low >= 0 and high <= 65535:
        return _scale_to_8bit(image, 1 / 257).convert("RGB")
    span = (high - low) or 1.0
    return _scale_to_8bit(image, 255 / span, -low * 255 / span).convert("RGB")
