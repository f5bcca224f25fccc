"""Load shedding inside the HTTP protocol: a whole request that finds the engine full never reaches the app.

Under 3x overload on a 2-core machine, most requests are refused, and what refusing
costs is taken from the engine (they share the interpreter lock). Refusing in front of
the ASGI app (``api.shedding``) still pays for h11's parsing, an asyncio task and h11
writing the response. Here, when one read holds exactly one complete, plainly framed
request (``POST`` to a generation route, ``Content-Length`` body, nothing pipelined
after it) and the engine is full, the prebuilt 503 is written straight to the socket
and the bytes are dropped: h11 never sees them and stays idle, so the connection
stays usable. Anything less plain (chunked, ``Expect``, an upgrade, a request split
over reads, a repeated or odd header) takes the normal path, where the same refusal is
made by ``LoadShedder.refuse`` or admission: no request is judged on a guess.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import h11

from glimpse.api.h11_timeouts import HeadTimeoutH11Protocol
from glimpse.api.shedding import LoadShedder

__all__ = ["SheddingH11Protocol", "WholeRequest", "parse_whole_post"]

_REFUSED_HEADERS = frozenset({b"transfer-encoding", b"expect", b"upgrade"})


@dataclass(slots=True, frozen=True)
class WholeRequest:
    """What the shedder needs from a request that arrived whole in one read."""

    path: bytes
    close: bool
    origin: bool
    request_id: bytes | None


def parse_whole_post(data: bytes, paths: frozenset[bytes]) -> WholeRequest | None:
    """The request in ``data`` if it is one complete, plainly framed POST to one of ``paths``.

    ``None`` means "not sure": the caller hands the bytes to h11 as usual.
    """
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = data[:head_end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1" or parts[1] not in paths:
        return None
    fields = _plain_fields(lines[1:])
    length = fields.get(b"content-length") if fields is not None else None
    if fields is None or length is None or not length.isdigit() or len(data) != head_end + 4 + int(length):
        return None
    return WholeRequest(
        path=parts[1],
        close=b"close" in fields.get(b"connection", b"").lower(),
        origin=b"origin" in fields,
        request_id=fields.get(b"x-request-id"),
    )


def _plain_fields(lines: list[bytes]) -> dict[bytes, bytes] | None:
    """Header fields by lower-case name; ``None`` for anything h11 should judge instead."""
    fields: dict[bytes, bytes] = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in b" \t":
            return None  # obsolete folding or a malformed line
        name = name.lower()
        if name in _REFUSED_HEADERS or (name == b"content-length" and name in fields):
            return None
        fields[name] = value.strip()
    return fields


class SheddingH11Protocol(HeadTimeoutH11Protocol):
    """uvicorn's h11 protocol (with the head deadline) that sheds whole requests itself."""

    shedder: LoadShedder | None = None

    def data_received(self, data: bytes) -> None:
        if self.shedder is not None and data.startswith(b"POST ") and self._shed(self.shedder, data):
            return
        super().data_received(data)

    def _between_requests(self) -> bool:
        conn = self.conn
        idle = conn.our_state is h11.IDLE and conn.their_state is h11.IDLE
        return idle and not conn.trailing_data[0] and (self.cycle is None or self.cycle.response_complete)

    def _shed(self, shedder: LoadShedder, data: bytes) -> bool:
        if not self._between_requests():
            return False
        started = time.perf_counter()
        request = parse_whole_post(data, shedder.post_paths)
        if request is None:
            return False
        path = request.path.decode()
        if not shedder.refuses_head("POST", path, origin=request.origin):
            return False
        self._unset_keepalive_if_required()
        self._cancel_head_timer()  # this head arrived in time; the keep-alive timer watches from here
        self.transport.write(shedder.raw_response(request.request_id, close=request.close))
        self.server_state.total_requests += 1
        if request.close:
            self.transport.close()
        else:
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )
        shedder.record(path, time.perf_counter() - started)
        return True
