"""How the server and its engine process talk: pickled message lists in length-prefixed frames.

One frame carries every message one side had ready in one pass of its event loop (a
step's tokens for all its requests, observer calls, a health snapshot), so the server's
loop wakes once per engine step however many requests are running. Both ends are our
own code in one installation, started by us, so pickle is safe here: nothing else can
write to the socket pair.

Errors cross as (module, class, message, attributes) and are rebuilt without calling
their own ``__init__`` (subclasses take different arguments; the engine's own, such as
LoRA's ``AdapterError``, live outside ``glimpse.errors``); anything that is not a
``GlimpseError`` arrives as ``EngineRequestError``, as it would from the engine itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import pickle
import struct
from typing import Any

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


def pack_error(exc: BaseException) -> tuple[str, str, str, dict[str, Any]]:
    """(module, class, message, attributes): any ``GlimpseError``, wherever its class is defined."""
    if isinstance(exc, GlimpseError):
        cls = type(exc)
        return cls.__module__, cls.__qualname__, exc.message, dict(vars(exc))
    message = f"The engine failed on this request: {type(exc).__name__}: {exc}"
    return EngineRequestError.__module__, EngineRequestError.__qualname__, message, {}


def unpack_error(packed: tuple[str, str, str, dict[str, Any]]) -> GlimpseError:
    """The error ``pack_error`` described, as its own class (``EngineRequestError`` if unknown here)."""
    module_name, qualname, message, attributes = packed
    cls: Any = None
    with contextlib.suppress(ImportError):
        cls = importlib.import_module(module_name)
        for part in qualname.split("."):
            cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and issubclass(cls, GlimpseError)):
        return EngineRequestError(message)
    exc = cls.__new__(cls)
    GlimpseError.__init__(exc, message)  # the base attributes, whatever the subclass's __init__ takes
    exc.__dict__.update(attributes)
    return exc
