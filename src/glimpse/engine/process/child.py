"""The engine process: the in-process engine (``HFEngine``) behind a socket, in a process of its own.

Why a process: in one process the engine thread and the HTTP event loop share the
interpreter lock, and the engine's step loop (many small tensor operations, each
dropping and taking the lock) keeps the loop waiting; under overload that wait is
what a refusal's latency is made of. Here the engine has an interpreter of its own.

Runs an asyncio loop of its own: submitted requests are served by ``HFEngine`` as in
the server, and their events go back in frames (``wire``), one per loop pass. The
observer's calls (metrics) come from the engine thread and are sent with the next
state push; the state (health, adapters, sampling defaults, the token room) is pushed
whenever it changes, checked every ``STATE_EVERY_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from glimpse.config import EngineSettings, ObsSettings
from glimpse.cpu_share import nice_this_process
from glimpse.engine.process.wire import FrameWriter, pack_error, read_frame
from glimpse.engine.protocol import GenerationRequest

__all__ = ["STATE_EVERY_S", "run"]

logger = logging.getLogger(__name__)

#: How often the engine's state is compared with what was last sent (and sent if it changed).
STATE_EVERY_S = 0.005


class _ForwardedCalls:
    """An observer that records its calls (from the engine thread) for the next frame."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Callable[..., None]:
        if not name.startswith("on_"):
            raise AttributeError(name)

        def record(*args: Any) -> None:
            with self._lock:
                self._calls.append((name, args))

        return record

    def take(self) -> list[tuple[str, tuple[Any, ...]]]:
        with self._lock:
            calls, self._calls = self._calls, []
        return calls


class _Core:
    def __init__(self, engine: Any, out: FrameWriter, calls: _ForwardedCalls | None) -> None:
        self.engine = engine
        self.out = out
        self.calls = calls
        self.requests: dict[str, asyncio.Task[None]] = {}
        self.stopping = asyncio.Event()
        self._state: tuple[Any, ...] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader) -> None:
        pusher = asyncio.ensure_future(self._push_state())
        try:
            while not self.stopping.is_set():
                try:
                    messages = await read_frame(reader)
                except (asyncio.IncompleteReadError, ConnectionError):
                    logger.warning("the server went away; the engine process stops")
                    break
                for message in messages:
                    self._handle(message)
        finally:
            pusher.cancel()
            for task in list(self.requests.values()):
                task.cancel()
            with contextlib.suppress(Exception):
                await self.engine.stop()
            self._send_state()
            self.out.send(("stopped",))
            await self.out.drain()
            self.out.close()

    def _handle(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "submit":
            _, rid, request = message
            self.requests[rid] = asyncio.ensure_future(self._run(rid, request))
        elif kind == "cancel":
            task = self.requests.get(message[1])
            if task is not None:
                task.cancel()
        elif kind == "call":
            self._keep(asyncio.ensure_future(self._call(*message[1:])))
        elif kind == "start":
            self._keep(asyncio.ensure_future(self._start()))
        elif kind == "stop":
            self.stopping.set()

    def _keep(self, task: asyncio.Task[None]) -> None:
        """Hold a task until it ends (the loop keeps only weak references)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _start(self) -> None:
        try:
            await self.engine.start()
        except BaseException as exc:  # noqa: BLE001 - the server raises it from its own start()
            self._send_state()
            self.out.send(("started", pack_error(exc)))
            return
        self._send_state()
        self.out.send(("started", None))

    async def _run(self, rid: str, request: GenerationRequest) -> None:
        try:
            async for event in self.engine.submit(request):
                self.out.send(("ev", rid, event))
            self.out.send(("end", rid))
        except asyncio.CancelledError:
            self.out.send(("end", rid))  # the server asked: nobody waits for more
        except BaseException as exc:  # noqa: BLE001 - every failure is the request's error
            self.out.send(("err", rid, pack_error(exc)))
        finally:
            self.requests.pop(rid, None)
            self._send_state()

    async def _call(self, call_id: int, method: str, args: tuple[Any, ...]) -> None:
        try:
            result = await getattr(self.engine, method)(*args)
        except BaseException as exc:  # noqa: BLE001 - raised again in the server
            self.out.send(("reply", call_id, False, pack_error(exc)))
        else:
            self.out.send(("reply", call_id, True, result))
        self._send_state()

    async def _push_state(self) -> None:
        while True:
            await asyncio.sleep(STATE_EVERY_S)
            self._send_state()

    def _send_state(self) -> None:
        if self.calls is not None:
            for name, args in self.calls.take():
                self.out.send(("obs", name, args))
        engine = self.engine
        state = (
            engine.health(),
            tuple(engine.adapters()),
            engine.sampling_defaults,
            engine.room(),
        )
        if state != self._state:
            self._state = state
            self.out.send(("state", *state))


def run(
    conn: Connection,
    settings: EngineSettings,
    obs: ObsSettings,
    nice: int,
    mmap_threshold_bytes: int,
    observe: bool,
) -> None:
    """The engine process's entry point (``multiprocessing``, spawned)."""
    from glimpse.obs import configure_logging

    # The server stops this process with a message once its drain is over; a signal sent to the
    # whole process group (Ctrl-C, a supervisor's SIGTERM) must not end the engine before that.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    listener = configure_logging(obs, background=True)  # started; stopped below, which writes what is queued
    nice_this_process(nice)  # every thread of the engine, and its preprocessing processes
    sock = socket.socket(fileno=os.dup(conn.fileno()))
    conn.close()
    try:
        asyncio.run(_serve(sock, settings, mmap_threshold_bytes, observe))
    finally:
        if listener is not None:
            listener.stop()


async def _serve(
    sock: socket.socket, settings: EngineSettings, mmap_threshold_bytes: int, observe: bool
) -> None:
    from glimpse.engine.hf import HFEngine

    reader, writer = await asyncio.open_unix_connection(sock=sock, limit=1 << 20)
    calls = _ForwardedCalls() if observe else None
    # Already niced as a whole: the preprocessing processes inherit it, so they add nothing.
    engine = HFEngine(settings, calls, worker_nice=0, malloc_mmap_threshold_bytes=mmap_threshold_bytes)
    await _Core(engine, FrameWriter(writer), calls).serve(reader)
