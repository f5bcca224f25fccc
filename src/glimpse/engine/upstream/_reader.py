"""Reading what an upstream sends, within bounds.

``httpx`` holds a whole line before ``aiter_lines`` yields it and a whole body for
``aread``: an upstream that answered with a 300 MB error body, or one 300 MB event
line, made the gateway hold all of it (1.2-1.5 GB of memory measured). Every read
here has a ceiling instead, and stops reading (which closes the connection) once it
is passed. Bytes are read raw, before any content decoding, so a compressed body
cannot inflate past a ceiling between two checks: Glimpse asks upstreams for
``Accept-Encoding: identity`` and refuses an answer that comes encoded anyway.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncGenerator

import httpx

from glimpse.errors import UpstreamError

__all__ = ["IDENTITY", "bounded_lines", "check_identity", "raw_chunks", "read_capped"]

#: The ``Accept-Encoding`` sent upstream: bytes on the wire are the bytes we count.
IDENTITY = "identity"

#: Line ends of an event stream (WHATWG SSE): CRLF, LF or a lone CR.
_NEWLINE = re.compile(rb"\r\n|\r|\n")


def check_identity(response: httpx.Response) -> None:
    """Refuse a content-encoded answer: its decoded size could not be bounded as it is read."""
    encoding = response.headers.get("content-encoding", IDENTITY).strip().lower()
    if encoding not in ("", IDENTITY):
        raise UpstreamError("the upstream sent a compressed answer although Glimpse asks for none")


async def read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the body, and whether there was more (the rest is never read).

    A content-encoded body reads as empty: its raw bytes mean nothing to a reader.
    """
    if response.headers.get("content-encoding", IDENTITY).strip().lower() not in ("", IDENTITY):
        return b"", False
    buffer = bytearray()
    async with contextlib.aclosing(raw_chunks(response)) as chunks:
        async for data in chunks:
            buffer += data
            if len(buffer) > limit:
                return bytes(buffer[:limit]), True
    return bytes(buffer), False


async def raw_chunks(response: httpx.Response) -> AsyncGenerator[bytes, None]:
    """The body as it arrives, undecoded; a body already read (an in-memory response, as
    ``httpx.MockTransport`` gives) comes whole, since ``aiter_raw`` refuses it."""
    if response.is_stream_consumed:
        yield response.content
        return
    async for data in response.aiter_raw():
        yield data


class _LineSplitter:
    """Splits raw bytes into lines of at most ``max_line`` bytes; a longer one is an error."""

    __slots__ = ("_buffer", "_max_line")

    def __init__(self, max_line: int) -> None:
        self._buffer = bytearray()
        self._max_line = max_line

    def feed(self, data: bytes) -> list[str]:
        self._buffer += data
        # A trailing CR may be the first half of a CRLF split across two reads: keep it.
        end = len(self._buffer) - (1 if self._buffer.endswith(b"\r") else 0)
        lines: list[str] = []
        start = 0
        for match in _NEWLINE.finditer(self._buffer, 0, end):
            lines.append(self._line(self._buffer[start : match.start()]))
            start = match.end()
        del self._buffer[:start]
        self._check(len(self._buffer))
        return lines

    def flush(self) -> list[str]:
        """The last line: one ended by the CR held back, or one with no line end at all."""
        tail, self._buffer = self._buffer, bytearray()
        if tail.endswith(b"\r"):
            return [self._line(tail[:-1])]
        return [self._line(tail)] if tail else []

    def _line(self, raw: bytearray) -> str:
        self._check(len(raw))
        # Whole lines only: a line feed never falls inside a multi-byte UTF-8 sequence.
        return raw.decode("utf-8", "replace")

    def _check(self, size: int) -> None:
        if size > self._max_line:
            raise UpstreamError(f"the upstream sent an event line longer than {self._max_line} bytes")


async def bounded_lines(
    response: httpx.Response, *, max_line: int, max_total: int
) -> AsyncGenerator[str, None]:
    """The lines of a body; ``UpstreamError`` once a line or the whole passes its bound."""
    splitter = _LineSplitter(max_line)
    total = 0
    async with contextlib.aclosing(raw_chunks(response)) as chunks:
        async for data in chunks:
            total += len(data)
            if total > max_total:
                raise UpstreamError(
                    f"the upstream's answer passed {max_total} bytes, more than this request can need"
                )
            for line in splitter.feed(data):
                yield line
    for line in splitter.flush():
        yield line
