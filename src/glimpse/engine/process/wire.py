"""How the server and its engine process talk: pickled message lists in length-prefixed frames.

One frame carries every message one side had ready in one pass of its event loop (a
step's tokens for all its requests, observer calls, a health snapshot), so the server's
loop wakes once per engine step however many requests are running. Both ends are our
own code in one installation, started by us, so pickle is safe here: nothing else can
write to the socket pair.

Errors cross as (class, message, attributes) and are rebuilt without calling their
``__init__`` (subclasses take different arguments); anything that is not a
``GlimpseError`` arrives as ``EngineRequestError``, as it would from the engine itself.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from typing import Any

from glimpse import errors
from glimpse.errors import EngineRequestError, GlimpseError

__all__ = ["FrameWriter", "pack_error", "read_frame", "unpack_error"]

_LENGTH = struct.Struct("!I")
#: A frame larger than this is a bug (a request's images are the largest thing sent).
MAX_FRAME_BYTES = 1 << 30


async def read_frame(reader: asyncio.StreamReader) -> list[Any]:
    """The next frame's messages; ``asyncio.IncompleteReadError`` when the other side is gone."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    if length > MAX_FRAME_BYTES:
        raise ValueError(f"engine process frame of {length} bytes")
    messages: list[Any] = pickle.loads(await reader.readexactly(length))  # noqa: S301 - our own process
    return messages


class FrameWriter:
    """Collects messages and writes them as one frame at the end of the loop's current pass."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending: list[Any] = []
        self._scheduled = False

    def send(self, message: Any) -> None:
        self._pending.append(message)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._pending or self._writer.is_closing():
            self._pending.clear()
            return
        data = pickle.dumps(self._pending, protocol=pickle.HIGHEST_PROTOCOL)
        self._pending = []
        self._writer.write(_LENGTH.pack(len(data)) + data)

    async def drain(self) -> None:
        self.flush()
        await self._writer.drain()

    def close(self) -> None:
        self.flush()
        self._writer.close()


def pack_error(exc: BaseException) -> tuple[str, str, dict[str, Any]]:
    if isinstance(exc, GlimpseError) and getattr(errors, type(exc).__name__, None) is type(exc):
        return type(exc).__name__, exc.message, dict(vars(exc))
    return "EngineRequestError", f"The engine failed on this request: {type(exc).__name__}: {exc}", {}


def unpack_error(packed: tuple[str, str, dict[str, Any]]) -> GlimpseError:
    name, message, attributes = packed
    cls = getattr(errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, GlimpseError)):
        cls = EngineRequestError
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.__dict__.update(attributes)
    exc.message = message
    return exc
