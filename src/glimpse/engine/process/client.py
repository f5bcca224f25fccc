"""``EngineProcess``: the in-process engine, run in a process of its own, seen from the server.

The server keeps its interpreter lock to itself (see ``child`` for why). What the
request path asks synchronously is answered here from the state the engine process
pushes when it changes (health, adapters, sampling defaults, the token room) and from
the model's processor, loaded here too (image token counts from declared sizes).
Streams and calls cross the socket pair; a request whose consumer stops is cancelled
there. If the engine process dies, every open request fails with ``EngineDead`` and
health says so, as when the engine thread dies in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import os
import socket
from collections import deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from glimpse.config import EngineSettings, ObsSettings
from glimpse.engine.batching import BatchObserver
from glimpse.engine.max_tokens import check_image_budget
from glimpse.engine.process import child
from glimpse.engine.process.wire import FrameWriter, read_frame, unpack_error
from glimpse.engine.protocol import (
    AdapterInfo,
    AdapterPlacement,
    EngineHealth,
    GenerationRequest,
    SamplingDefaults,
    SamplingParams,
    TokenEvent,
)
from glimpse.errors import EngineDead, GlimpseError, InvalidRequest

__all__ = ["EngineProcess"]

logger = logging.getLogger(__name__)

#: How long the engine process gets to stop (its own stop waits for the engine thread).
STOP_TIMEOUT_S = 60.0


@dataclass(slots=True)
class _Stream:
    events: deque[TokenEvent | GlimpseError | None] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False


class EngineProcess:
    """Engine, sampling resolver, image size check and adapter serving, over a socket pair."""

    def __init__(
        self,
        settings: EngineSettings,
        observer: BatchObserver | None = None,
        *,
        obs: ObsSettings | None = None,
        worker_nice: int = 0,
        malloc_mmap_threshold_bytes: int = 2**20,
    ) -> None:
        self._settings = settings
        self._observer = observer
        self._obs = obs or ObsSettings()
        self._nice = worker_nice
        self._mmap_threshold = malloc_mmap_threshold_bytes
        self._name = settings.served_model_name or settings.model
        self._health = EngineHealth(False, "starting the engine process")
        self._adapters: tuple[AdapterInfo, ...] = ()
        self._defaults = SamplingDefaults()
        self._room: int | None = None
        self._processor: Any = None
        self._process: Any = None
        self._out: FrameWriter | None = None
        self._reading: asyncio.Task[None] | None = None
        self._streams: dict[str, _Stream] = {}
        self._calls: dict[int, asyncio.Future[Any]] = {}
        self._call_ids = itertools.count()
        self._started: asyncio.Future[Any] | None = None
        self._stopped = asyncio.Event()
        self._dead: str | None = None

    @property
    def model_name(self) -> str:
        return self._name

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")  # torch and threads: never fork
        here, there = context.Pipe(duplex=True)
        self._process = context.Process(
            target=child.run,
            args=(
                there,
                self._settings,
                self._obs,
                self._nice,
                self._mmap_threshold,
                self._observer is not None,
            ),
            name="glimpse-engine",
        )
        self._process.start()
        there.close()
        sock = socket.socket(fileno=os.dup(here.fileno()))
        here.close()
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
        self._out = FrameWriter(writer)
        self._started = loop.create_future()
        self._reading = asyncio.ensure_future(self._read(reader))
        self._out.send(("start",))
        packed = await self._started
        if packed is not None:
            raise unpack_error(packed)
        from transformers import AutoProcessor

        from glimpse.engine.loader import resolve_model_path

        source, _ = resolve_model_path(self._settings)
        # For image token counts from declared sizes (before any image is decoded here).
        self._processor = await asyncio.to_thread(
            AutoProcessor.from_pretrained, source, trust_remote_code=self._settings.trust_remote_code
        )

    async def stop(self) -> None:
        if self._out is not None and self._dead is None:
            self._out.send(("stop",))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), STOP_TIMEOUT_S)
        process = self._process
        if process is not None:
            await asyncio.to_thread(process.join, 10)
            if process.is_alive():
                process.kill()
                await asyncio.to_thread(process.join, 10)
        if self._reading is not None:
            self._reading.cancel()
        self._health = EngineHealth(False, "stopped")

    def health(self) -> EngineHealth:
        return self._health

    def resolve_sampling(self, sampling: SamplingParams) -> SamplingParams:
        return sampling.resolved(self._defaults)

    def check_image_sizes(self, sizes: Sequence[tuple[int, int]], max_new_tokens: int) -> None:
        if self._processor is not None and self._room is not None:
            check_image_budget(self._processor, sizes, max_new_tokens, self._room)

    def adapters(self) -> list[AdapterInfo]:
        return list(self._adapters)

    def adapter(self, name: str) -> AdapterInfo | None:
        return next((a for a in self._adapters if a.name == name), None)

    async def load_adapter(self, name: str, path: str) -> AdapterInfo:
        result: AdapterInfo = await self._call("load_adapter", name, path)
        return result

    async def unload_adapter(self, name: str) -> tuple[AdapterPlacement, ...]:
        result: tuple[AdapterPlacement, ...] = await self._call("unload_adapter", name)
        return result

    async def submit(self, request: GenerationRequest) -> AsyncGenerator[TokenEvent, None]:
        self._check_alive()
        rid = request.request_id
        if rid in self._streams:
            raise InvalidRequest(f"Request id {rid!r} is already running.")
        stream = self._streams[rid] = _Stream()
        assert self._out is not None
        self._out.send(("submit", rid, request))
        try:
            while True:
                while not stream.events:
                    stream.arrived.clear()
                    await stream.arrived.wait()
                item = stream.events.popleft()
                if item is None:
                    return
                if isinstance(item, GlimpseError):
                    raise item
                yield item
        finally:
            del self._streams[rid]
            if not stream.ended and self._dead is None and self._out is not None:
                self._out.send(("cancel", rid))

    async def _call(self, method: str, *args: Any) -> Any:
        self._check_alive()
        assert self._out is not None
        call_id = next(self._call_ids)
        reply = self._calls[call_id] = asyncio.get_running_loop().create_future()
        self._out.send(("call", call_id, method, args))
        try:
            return await reply
        finally:
            self._calls.pop(call_id, None)

    def _check_alive(self) -> None:
        if self._dead is not None:
            raise EngineDead(
                f"The model engine has stopped ({self._dead}); this server cannot answer any more."
            )

    async def _read(self, reader: asyncio.StreamReader) -> None:
        reason = "the engine process exited"
        try:
            while True:
                for message in await read_frame(reader):
                    self._dispatch(message)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception as exc:  # noqa: BLE001 - a broken frame ends the engine like a crash
            logger.exception("engine process frame could not be read")
            reason = f"unreadable frame: {exc!r}"
        self._stopped.set()
        self._die(reason)

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind in ("ev", "end", "err"):
            self._on_stream(kind, message)
        elif kind == "state":
            self._health, self._adapters, self._defaults, self._room = message[1:]
        elif kind == "obs":
            if self._observer is not None:
                with contextlib.suppress(Exception):  # a metric must never break serving
                    getattr(self._observer, message[1])(*message[2])
        elif kind == "reply":
            self._on_reply(*message[1:])
        elif kind == "started":
            if self._started is not None and not self._started.done():
                self._started.set_result(message[1])
        elif kind == "stopped":
            self._stopped.set()

    def _on_stream(self, kind: str, message: tuple[Any, ...]) -> None:
        stream = self._streams.get(message[1])
        if stream is None:  # its consumer has gone; the cancel is on its way
            return
        if kind == "ev":
            stream.events.append(message[2])
        else:
            stream.ended = True
            stream.events.append(None if kind == "end" else unpack_error(message[2]))
        stream.arrived.set()

    def _on_reply(self, call_id: int, ok: bool, value: Any) -> None:
        reply = self._calls.get(call_id)
        if reply is None or reply.done():
            return
        if ok:
            reply.set_result(value)
        else:
            reply.set_exception(unpack_error(value))

    def _die(self, reason: str) -> None:
        if self._dead is not None:
            return
        self._dead = reason
        if self._started is not None and not self._started.done():
            self._started.set_exception(EngineDead(f"The engine process did not start: {reason}."))
        self._health = EngineHealth(False, "engine stopped")
        error = EngineDead(_dead_message(reason))
        for stream in self._streams.values():
            if not stream.ended:
                stream.ended = True
                stream.events.append(error)
                stream.arrived.set()
        for reply in self._calls.values():
            if not reply.done():
                reply.set_exception(error)


def _dead_message(reason: str) -> str:
    return f"The model engine has stopped ({reason}); this server cannot answer any more."
