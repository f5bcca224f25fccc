"""The bounded line reader: the same lines as ``httpx``'s, and never a line or body past its bound."""

import httpx
import pytest

from glimpse.engine.upstream._reader import bounded_lines, read_capped
from glimpse.errors import UpstreamError

from ._fakes import Flood, ScriptedStream


async def lines_of(pieces, *, max_line=1024, max_total=1 << 20):
    response = httpx.Response(200, stream=ScriptedStream(list(pieces)))
    return [line async for line in bounded_lines(response, max_line=max_line, max_total=max_total)]


@pytest.mark.parametrize(
    "pieces",
    [
        [b"data: a\n\ndata: b\n\n"],
        [b"data: a\r\n\r\ndata: b\r\n\r\n"],
        [b"data: a\r\rdata: b\r\r"],
        [b"data: a\r", b"\n\r", b"\ndata: ", b"b\n", b"\n"],  # CRLF split across reads
        [b"da", b"ta: a\n", b"\nda", b"ta: b\n\n"],
    ],
)
async def test_line_ends_of_every_kind_and_split_anywhere(pieces):
    assert await lines_of(pieces) == ["data: a", "", "data: b", ""]


async def test_an_unterminated_last_line_is_kept_and_utf8_split_across_reads_is_whole():
    text = "data: 你好".encode()
    assert await lines_of([text[:8], text[8:]]) == ["data: 你好"]


async def test_a_line_at_its_bound_passes_and_one_byte_more_fails():
    assert await lines_of([b"x" * 16 + b"\n"], max_line=16) == ["x" * 16]
    with pytest.raises(UpstreamError, match="longer than 16 bytes"):
        await lines_of([b"x" * 17 + b"\n"], max_line=16)
    with pytest.raises(UpstreamError, match="longer than 16 bytes"):
        await lines_of([b"x" * 10, b"x" * 10], max_line=16)  # no line end yet


async def test_the_whole_body_is_bounded():
    with pytest.raises(UpstreamError, match="passed 100 bytes"):
        await lines_of([b"a\n" * 40, b"a\n" * 40], max_total=100)


async def test_read_capped_stops_reading_past_its_limit():
    flood = Flood(b"x" * 1000, 1000)
    body, truncated = await read_capped(httpx.Response(500, stream=flood), 2500)
    assert (len(body), truncated) == (2500, True)
    assert flood.sent == 3000


async def test_read_capped_reads_an_in_memory_body_and_ignores_an_encoded_one():
    assert await read_capped(httpx.Response(400, content=b"short"), 100) == (b"short", False)
    encoded = httpx.Response(400, headers={"content-encoding": "br"}, stream=Flood(b"?", 10))
    assert await read_capped(encoded, 100) == (b"", False)
