"""Fetch an image URL without becoming a proxy into our own network.

Each hop (the first request and every redirect, at most ``MAX_REDIRECTS``) goes
through the same gate: http(s) only, no credentials in the URL, host on the
allow-list, every resolved address public (see ``addresses.py``). A refused
address and a name that does not resolve get the same answer, so refusals tell a
caller nothing about the server's network (the reason goes to the log). The request
then goes to the very address that was checked, with the original name in the
``Host`` header and as TLS SNI (so certificates are still verified against the
name), which closes the DNS-rebinding window between check and connect.

Bodies are asked for with ``Accept-Encoding: identity`` and compressed ones are
refused: a compressed body could inflate past any cap in a single chunk.
The download stops as soon as it passes ``max_image_bytes``.

Residual risks, accepted: connections go out with ``Connection: close`` so a
pooled connection opened for one name is never reused for another name on the
same address, which only holds if the client passed in is HTTP/1.1 and used for
nothing else that connects to bare addresses; use ``create_fetch_client``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from http.cookiejar import CookieJar, DefaultCookiePolicy

import anyio
import httpx

from glimpse.config import MediaSettings
from glimpse.errors import ImageTooLarge, InvalidImage
from glimpse.media.addresses import IPAddress, host_allowed, literal_address, refusal_reason

__all__ = ["MAX_REDIRECTS", "Resolver", "UrlFetcher", "create_fetch_client", "system_resolver"]

logger = logging.getLogger(__name__)

MAX_REDIRECTS = 3
Resolver = Callable[[str, int], Awaitable[list[str]]]
_DEFAULT_PORTS = {"http": 80, "https": 443}


async def system_resolver(host: str, port: int) -> list[str]:
    """Resolve with the system resolver, off the event loop (anyio runs getaddrinfo in a thread)."""
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def create_fetch_client(settings: MediaSettings) -> httpx.AsyncClient:
    """The client image fetching expects: no env proxies, no cookies kept, HTTP/1.1, no auto-redirects."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.fetch_timeout_s),
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=0),
        follow_redirects=False,
        trust_env=False,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
    )


class UrlFetcher:
    """Downloads image URLs through the SSRF gate; one instance per app, sharing one client."""

    def __init__(self, settings: MediaSettings, client: httpx.AsyncClient, resolver: Resolver) -> None:
        self._settings = settings
        self._client = client
        self._resolver = resolver
        self._timeout = httpx.Timeout(settings.fetch_timeout_s)
        # Per-operation timeouts alone let a server drip one byte per interval for ever.
        self._deadline = 2 * settings.fetch_timeout_s

    async def fetch(self, url: str) -> bytes:
        try:
            with anyio.fail_after(self._deadline):
                return await self._follow(url)
        except TimeoutError as exc:
            raise InvalidImage(f"Fetching the image URL took longer than {self._deadline:g} s.") from exc

    async def _follow(self, url: str) -> bytes:
        target = self._check_url(url)
        for _ in range(MAX_REDIRECTS + 1):
            address = await self._resolve(target)
            response = await self._send(target, address)
            try:
                location = response.headers.get("location") if response.is_redirect else None
                if location is None:
                    return await self._read(response)
            finally:
                await response.aclose()
            try:
                next_url = str(target.join(location))
            except (httpx.InvalidURL, ValueError) as exc:
                raise InvalidImage("The image URL redirected to an invalid URL.") from exc
            target = self._check_url(next_url)
        raise InvalidImage(f"The image URL redirected more than {MAX_REDIRECTS} times.")

    def _check_url(self, url: str) -> httpx.URL:
        try:
            target = httpx.URL(url)
            host = target.host  # decodes an IDN host: a malformed one raises idna.IDNAError here
        except (httpx.InvalidURL, ValueError) as exc:
            raise InvalidImage("The image URL is not a valid URL.") from exc
        if target.scheme not in _DEFAULT_PORTS:
            raise InvalidImage("Only http and https image URLs are allowed.")
        if target.userinfo:
            raise InvalidImage("Image URLs must not contain credentials.")
        if not host:
            raise InvalidImage("The image URL has no host.")
        allowlist = self._settings.url_allowlist
        if not (host_allowed(host, allowlist) or host_allowed(_ascii_host(target), allowlist)):
            raise InvalidImage(f"Image URLs may not point at {host}: the host is not on the allow-list.")
        return target

    async def _resolve(self, target: httpx.URL) -> IPAddress:
        host = _ascii_host(target)
        try:
            literal = literal_address(host)
        except ValueError as exc:
            raise InvalidImage(f"The image URL host {host} is not a canonical IP address.") from exc
        if literal is not None:
            addresses = [literal]
        else:
            addresses = await self._lookup(host, target.port or _DEFAULT_PORTS[target.scheme])
        for address in addresses:
            reason = refusal_reason(address)
            if reason is not None:
                logger.info("refused image URL host %s: %s resolves to %s", host, address, reason)
                raise _not_public(host)
        return addresses[0]

    async def _lookup(self, host: str, port: int) -> list[IPAddress]:
        try:
            texts = await self._resolver(host, port)
            addresses = [ipaddress.ip_address(text) for text in texts]
        except (OSError, ValueError) as exc:
            logger.info("refused image URL host %s: it could not be resolved (%r)", host, exc)
            raise _not_public(host) from exc
        if not addresses:
            logger.info("refused image URL host %s: it resolves to no address", host)
            raise _not_public(host)
        return addresses

    async def _send(self, target: httpx.URL, address: IPAddress) -> httpx.Response:
        extensions: dict[str, object] = {"timeout": self._timeout.as_dict()}
        if target.scheme == "https":
            extensions["sni_hostname"] = _ascii_host(target)
        request = httpx.Request(
            "GET",
            target.copy_with(host=str(address)),
            headers={
                "Host": target.netloc.decode("ascii"),
                "Accept": "image/*",
                "Accept-Encoding": "identity",
                "Connection": "close",
                "User-Agent": "glimpse-image-fetch",
            },
            extensions=extensions,
        )
        logger.debug("fetching image from %s via %s", target.host, address)
        try:
            return await self._client.send(request, stream=True, follow_redirects=False, auth=None)
        except httpx.TimeoutException as exc:
            raise InvalidImage("The image URL did not answer in time.") from exc
        except httpx.HTTPError as exc:
            raise InvalidImage(f"The image URL could not be fetched ({type(exc).__name__}).") from exc

    async def _read(self, response: httpx.Response) -> bytes:
        limit = self._settings.max_image_bytes
        if response.status_code != httpx.codes.OK:
            raise InvalidImage(f"The image URL answered HTTP {response.status_code}.")
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise InvalidImage(f"The image URL sent a compressed body ({encoding}); send it uncompressed.")
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ImageTooLarge(f"The image at the URL is {declared} bytes; the limit is {limit} bytes.")
        body = bytearray()
        try:
            # Content-Encoding is refused above, so these are the bytes as sent.
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > limit:
                    raise ImageTooLarge(f"The image at the URL is larger than {limit} bytes, the limit.")
        except httpx.TimeoutException as exc:
            raise InvalidImage("The image URL stopped sending data.") from exc
        except httpx.HTTPError as exc:
            raise InvalidImage(f"The image download failed ({type(exc).__name__}).") from exc
        return bytes(body)


def _not_public(host: str) -> InvalidImage:
    """The one refusal for every address reason, "could not be resolved" included.

    Saying which (a private address, loopback, no such name) would turn the server
    into an oracle on its own network's DNS; the reason is logged for operators.
    """
    return InvalidImage(
        f"The image URL host {host} does not resolve to a public address; only public addresses may be "
        "fetched."
    )


def _ascii_host(url: httpx.URL) -> str:
    return url.raw_host.decode("ascii")
