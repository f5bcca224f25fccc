"""Image intake: every client image is detected, bounded, decoded and hashed here.

Framework-free: takes bytes and strings, returns ``DecodedImage`` or raises the
errors of ``glimpse.errors``. It does not import ``glimpse.engine``; the API's
adapters turn a ``DecodedImage`` into the engine's ``ImagePart``.
"""

from glimpse.media.budget import PixelBudget, PixelLease
from glimpse.media.decode import DecodedImage, ImageHeader, decode_image, probe_image
from glimpse.media.fetch import MAX_REDIRECTS, Resolver, create_fetch_client, system_resolver
from glimpse.media.intake import DecodedBatch, ImageIntake
from glimpse.media.sniff import sniff_format
from glimpse.media.threads import BlockingRunner

__all__ = [
    "MAX_REDIRECTS",
    "BlockingRunner",
    "DecodedBatch",
    "DecodedImage",
    "ImageHeader",
    "ImageIntake",
    "PixelBudget",
    "PixelLease",
    "Resolver",
    "create_fetch_client",
    "decode_image",
    "probe_image",
    "sniff_format",
    "system_resolver",
]
