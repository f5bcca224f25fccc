"""Server-sent events, reduced to what OpenAI-compatible streams use.

Shared by the upstream engine (reading vLLM/SGLang/Glimpse streams) and the
clients (bench, batch, ask); stdlib only. Kept on its own so that the parsing rules (multi-line ``data``,
comments, a missing final blank line) are tested on their own: a parser that
merges or drops an event silently skews every token count built on top of it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator

__all__ = ["DONE", "aiter_sse_data", "iter_sse_data"]

#: The sentinel OpenAI-compatible servers send as the last event's data.
DONE = "[DONE]"


class _Accumulator:
    """Collects ``data`` fields until a blank line ends the event (WHATWG SSE rules)."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[str] = []

    def feed(self, line: str) -> str | None:
        line = line.rstrip("\r\n")
        if not line:
            return self.flush()
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        if field == "data":
            self._parts.append(value.removeprefix(" "))
        return None

    def flush(self) -> str | None:
        if not self._parts:
            return None
        data = "\n".join(self._parts)
        self._parts.clear()
        return data


def iter_sse_data(lines: Iterable[str]) -> Iterator[str]:
    """Yield the data of each event; an unterminated last event is still yielded."""
    acc = _Accumulator()
    for line in lines:
        data = acc.feed(line)
        if data is not None:
            yield data
    tail = acc.flush()
    if tail is not None:
        yield tail


async def aiter_sse_data(lines: AsyncIterable[str]) -> AsyncGenerator[str, None]:
    """Async twin of :func:`iter_sse_data`, fed by ``httpx.Response.aiter_lines()``."""
    acc = _Accumulator()
    async for line in lines:
        data = acc.feed(line)
        if data is not None:
            yield data
    tail = acc.flush()
    if tail is not None:
        yield tail
