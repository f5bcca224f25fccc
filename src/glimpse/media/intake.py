"""The single door every image comes through, whatever endpoint it arrived at.

JSON base64, data URLs, multipart uploads and http(s) URLs all become bytes
(``load_*``), and a request's bytes go through ``decode_all`` together: every
image is sized from its header first, the request's total is checked, room is
leased under the server's pixel budget, and only then is anything decoded. One
format check, one set of limits, one decode, one hash.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

import httpx

from glimpse.config import MediaSettings
from glimpse.errors import ImageTooLarge, InvalidImage, InvalidRequest
from glimpse.media.budget import PixelBudget, PixelLease
from glimpse.media.decode import DecodedImage, ImageHeader, configure_pillow, decode_image, probe_image
from glimpse.media.encoding import decode_base64, is_data_url, parse_data_url
from glimpse.media.fetch import Resolver, UrlFetcher, system_resolver
from glimpse.media.memory import set_mmap_threshold
from glimpse.media.threads import BlockingRunner

__all__ = ["DecodedBatch", "ImageIntake"]

logger = logging.getLogger(__name__)

_URL_PREFIXES = ("http://", "https://")
# Anything with a scheme-like prefix that is not data/http(s) (file:, ftp:, gopher:, ...)
# is a URL we refuse by name rather than as "malformed base64".
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789+.-")


class DecodedBatch:
    """One request's decoded images and the share of the server's pixel budget they hold.

    Call ``free`` once the engine has taken the images (its first event is in):
    the pixel buffers are closed then, however long the request objects that
    point at them live on (a streamed answer, a shared in-flight generation).
    ``release`` returns the budget alone, for exits where the images might still
    be read; both are idempotent, so ``release`` belongs in a ``finally``.
    """

    __slots__ = ("_lease", "images")

    def __init__(self, images: tuple[DecodedImage, ...], lease: PixelLease) -> None:
        self.images = images
        self._lease = lease

    @property
    def pixels(self) -> int:
        return self._lease.pixels

    def free(self) -> None:
        for decoded in self.images:
            decoded.image.close()  # drops the pixel buffer now; the object becomes unusable
        self.release()

    def release(self) -> None:
        self._lease.release()


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
        self._budget = PixelBudget(settings.max_pixels_in_flight)
        if settings.allow_urls and http_client is None:
            logger.warning("image URLs are enabled but no HTTP client was given; URLs will be refused")
        configure_pillow(settings.max_pixels)
        set_mmap_threshold(settings.malloc_mmap_threshold_bytes)

    @property
    def settings(self) -> MediaSettings:
        return self._settings

    @property
    def runner(self) -> BlockingRunner:
        """The bounded thread helper, for other blocking media work."""
        return self._runner

    @property
    def budget(self) -> PixelBudget:
        """The server-wide bound on decoded pixels in flight."""
        return self._budget

    def check_count(self, n: int) -> None:
        """Refuse a request carrying more images than allowed, before any is decoded."""
        limit = self._settings.max_images_per_request
        if n > limit:
            raise InvalidRequest(f"The request has {n} images; at most {limit} are allowed per request.")

    async def decode_all(
        self,
        blobs: Sequence[bytes],
        deadline: float | None = None,
        check: Callable[[Sequence[ImageHeader]], None] | None = None,
    ) -> DecodedBatch:
        """Decode one request's images, holding their pixels under the server-wide budget.

        All headers are read and checked (per image, the request's total, then
        ``check``, e.g. the engine's token budget) before anything is decoded. Waiting
        for room ends at ``pixel_wait_s`` or the request's ``deadline``
        (``time.monotonic()``), whichever is first, with ``Overloaded``.
        """
        self.check_count(len(blobs))
        headers = await self._runner.run(_probe_all, blobs, self._settings)
        if check is not None:
            check(headers)
        wait = self._settings.pixel_wait_s
        if deadline is not None:
            wait = max(0.0, min(wait, deadline - time.monotonic()))
        lease = await self._budget.acquire(sum(header.pixels for header in headers), wait)
        try:
            results = await asyncio.gather(
                *(self._runner.run(decode_image, data, self._settings) for data in blobs),
                return_exceptions=True,  # every thread has finished before the lease goes back
            )
        except BaseException:
            lease.release()
            raise
        images = [result for result in results if isinstance(result, DecodedImage)]
        failure = next((result for result in results if isinstance(result, BaseException)), None)
        if failure is not None:
            for decoded in images:
                decoded.image.close()
            lease.release()
            raise failure
        return DecodedBatch(tuple(images), lease)

    async def load_base64(self, payload: str) -> bytes:
        """The bytes of plain base64; a full ``data:`` URL is tolerated here too, an http(s) URL is not."""
        if payload.lstrip()[:8].lower().startswith(_URL_PREFIXES):
            raise InvalidImage(
                "This field takes the image itself, base64-encoded (or as a data URL), not a URL; "
                "/v1/chat/completions accepts image URLs in image_url."
            )
        # Parsing megabytes of text is blocking work too, so it goes to a thread.
        return await self._runner.run(_bytes_of_text, payload, self._settings)

    async def load_reference(self, ref: str) -> bytes:
        """The bytes an OpenAI ``image_url.url`` stands for: data URL, http(s) URL or base64."""
        text = ref.strip()
        if is_data_url(text):
            return await self.load_base64(text)
        if text[:8].lower().startswith(_URL_PREFIXES):
            return await self._fetch(text)
        scheme = _scheme_of(text)
        if scheme is not None:
            raise InvalidImage(f"{scheme}: URLs are not accepted; send an http(s) URL, a data URL or base64.")
        return await self.load_base64(text)

    # One image outside any request's pixel budget: for tools and tests. Request
    # handlers use ``load_*`` and ``decode_all``.

    async def from_bytes(self, data: bytes) -> DecodedImage:
        """Decode raw bytes (a multipart upload, a fetched body)."""
        return await self._runner.run(decode_image, data, self._settings)

    async def from_base64(self, payload: str) -> DecodedImage:
        """Decode plain base64 or a data URL."""
        return await self.from_bytes(await self.load_base64(payload))

    async def from_reference(self, ref: str) -> DecodedImage:
        """Decode what an OpenAI ``image_url.url`` may hold: data URL, http(s) URL or base64."""
        return await self.from_bytes(await self.load_reference(ref))

    async def _fetch(self, url: str) -> bytes:
        if not self._settings.allow_urls:
            raise InvalidImage(
                "Image URLs are disabled on this server; send the image as a data URL or base64."
            )
        if self._fetcher is None:
            raise InvalidImage("Image URLs cannot be fetched by this server; send a data URL or base64.")
        return await self._fetcher.fetch(url)


def _bytes_of_text(payload: str, settings: MediaSettings) -> bytes:
    if is_data_url(payload):
        _declared_mime, payload = parse_data_url(payload)
    return decode_base64(payload, settings.max_image_bytes)


def _probe_all(blobs: Sequence[bytes], settings: MediaSettings) -> list[ImageHeader]:
    """Every image's header, then the request's total: a refusal costs header parses only."""
    headers = [probe_image(data, settings) for data in blobs]
    total = sum(header.pixels for header in headers)
    if total > settings.max_request_pixels:
        sizes = ", ".join(f"{header.width}x{header.height}" for header in headers)
        raise ImageTooLarge(
            f"The request's images ({sizes}) have {total} pixels in all; the limit is "
            f"{settings.max_request_pixels} pixels per request."
        )
    return headers


def _scheme_of(text: str) -> str | None:
    """The URL scheme ``text`` starts with, if it looks like one (base64 never has ':')."""
    head, sep, _rest = text[:32].partition(":")
    if sep and head and head[0].isalpha() and set(head.lower()) <= _SCHEME_CHARS:
        return head.lower()
    return None
