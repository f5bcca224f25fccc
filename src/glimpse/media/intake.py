"""The single door every image comes through, whatever endpoint it arrived at.

JSON base64, data URLs, multipart uploads and http(s) URLs all end in
``from_bytes``: one format check, one set of limits, one decode, one hash.
"""

from __future__ import annotations

import logging

import httpx

from glimpse.config import MediaSettings
from glimpse.errors import InvalidImage, InvalidRequest
from glimpse.media.decode import DecodedImage, configure_pillow, decode_image
from glimpse.media.encoding import decode_base64, is_data_url, parse_data_url
from glimpse.media.fetch import Resolver, UrlFetcher, system_resolver
from glimpse.media.threads import BlockingRunner

__all__ = ["ImageIntake"]

logger = logging.getLogger(__name__)

_URL_PREFIXES = ("http://", "https://")
# Anything with a scheme-like prefix that is not data/http(s) (file:, ftp:, gopher:, ...)
# is a URL we refuse by name rather than as "malformed base64".
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+.-")


class ImageIntake:
    """Validates and decodes client images; one per app, safe to share across requests.

    ``http_client`` is needed only when ``settings.allow_urls`` is on; it should
    come from ``create_fetch_client``. ``resolver`` exists for tests.
    """

    def __init__(
        self,
        settings: MediaSettings,
        http_client: httpx.AsyncClient | None = None,
        max_threads: int = 4,
        resolver: Resolver = system_resolver,
    ) -> None:
        self._settings = settings
        self._runner = BlockingRunner(max_threads)
        self._fetcher = UrlFetcher(settings, http_client, resolver) if http_client is not None else None
        if settings.allow_urls and http_client is None:
            logger.warning("image URLs are enabled but no HTTP client was given; URLs will be refused")
        configure_pillow(settings.max_pixels)

    @property
    def settings(self) -> MediaSettings:
        return self._settings

    @property
    def runner(self) -> BlockingRunner:
        """The bounded thread helper, for other blocking media work."""
        return self._runner

    def check_count(self, n: int) -> None:
        """Refuse a request carrying more images than allowed, before any is decoded."""
        limit = self._settings.max_images_per_request
        if n > limit:
            raise InvalidRequest(f"The request has {n} images; at most {limit} are allowed per request.")

    async def from_bytes(self, data: bytes) -> DecodedImage:
        """Decode raw bytes (a multipart upload, a fetched body)."""
        return await self._runner.run(decode_image, data, self._settings)

    async def from_base64(self, payload: str) -> DecodedImage:
        """Decode plain base64; a full ``data:`` URL is tolerated here too, an http(s) URL is not."""
        if payload.lstrip()[:8].lower().startswith(_URL_PREFIXES):
            raise InvalidImage(
                "This field takes the image itself, base64-encoded (or as a data URL), not a URL; "
                "/v1/chat/completions accepts image URLs in image_url."
            )
        # Parsing megabytes of text is blocking work too, so all of it goes to the thread.
        return await self._runner.run(_decode_text, payload, self._settings)

    async def from_reference(self, ref: str) -> DecodedImage:
        """Decode what an OpenAI ``image_url.url`` may hold: data URL, http(s) URL or base64."""
        text = ref.strip()
        if is_data_url(text):
            return await self.from_base64(text)
        if text[:8].lower().startswith(_URL_PREFIXES):
            return await self.from_bytes(await self._fetch(text))
        scheme = _scheme_of(text)
        if scheme is not None:
            raise InvalidImage(f"{scheme}: URLs are not accepted; send an http(s) URL, a data URL or base64.")
        return await self.from_base64(text)

    async def _fetch(self, url: str) -> bytes:
        if not self._settings.allow_urls:
            raise InvalidImage(
                "Image URLs are disabled on this server; send the image as a data URL or base64."
            )
        if self._fetcher is None:
            raise InvalidImage("Image URLs cannot be fetched by this server; send a data URL or base64.")
        return await self._fetcher.fetch(url)


def _decode_text(payload: str, settings: MediaSettings) -> DecodedImage:
    if is_data_url(payload):
        _declared_mime, payload = parse_data_url(payload)
    return decode_image(decode_base64(payload, settings.max_image_bytes), settings)


def _scheme_of(text: str) -> str | None:
    """The URL scheme ``text`` starts with, if it looks like one (base64 never has ':')."""
    head, sep, _rest = text[:32].partition(":")
    if sep and head and head[0].isalpha() and set(head.lower()) <= _SCHEME_CHARS:
        return head.lower()
    return None
