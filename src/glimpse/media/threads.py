"""The one way blocking work leaves the event loop, and comes back without hanging.

A shared ``CapacityLimiter`` bounds how many decodes run at once, so a burst of
large uploads queues here instead of starving anyio's default thread pool (which
DNS lookups and file I/O also use) or holding dozens of decoded bitmaps at once.

``contained`` wraps every callable handed to a thread (here and in the engine's
preprocessing pool). asyncio cannot put ``StopIteration`` into a future: a thread
that raises it leaves its awaiter waiting for ever (issue 12, F1), and
``GeneratorExit`` or ``StopAsyncIteration`` escaping a thread confuse the
coroutine machinery the same way. ``contained`` turns such exceptions into a
``GlimpseError`` the request sees, chained to the original: the API's error
mapping logs a 5xx once, with that traceback, where it is handled.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from concurrent.futures import Executor
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread

from glimpse.errors import GlimpseError

__all__ = ["BlockingRunner", "contained", "run_in_executor"]

P = ParamSpec("P")
T = TypeVar("T")

_UNEXPECTED = "This request failed unexpectedly on the server; see the server log."


def _deliverable(exc: BaseException) -> bool:
    """Whether ``exc`` reaches an awaiter intact: an ordinary exception, not a control-flow one."""
    return isinstance(exc, Exception) and not isinstance(exc, StopIteration | StopAsyncIteration)


def contained(
    func: Callable[P, T],
    *,
    error: type[GlimpseError] = GlimpseError,
    message: str = _UNEXPECTED,
    convert_all: bool = True,
) -> Callable[P, T]:
    """``func`` made safe to run in a thread: it raises only what an awaiter can receive.

    A ``GlimpseError`` passes unchanged. Any other exception becomes
    ``error(message)``, chained to the original (whose traceback is then logged
    with the error); with ``convert_all=False`` ordinary exceptions pass too, for
    callers that handle them, and only those asyncio cannot deliver
    (``StopIteration``, ``StopAsyncIteration``, ``GeneratorExit``, ...) are converted.
    """

    @functools.wraps(func)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return func(*args, **kwargs)
        except GlimpseError:
            raise
        except BaseException as exc:
            if not convert_all and _deliverable(exc):
                raise
            raise error(message) from exc

    return call


async def run_in_executor(
    executor: Executor | None,
    func: Callable[P, T],
    /,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Await ``func(*args, **kwargs)`` in ``executor`` (None: asyncio's default), ``contained``.

    The context (request id for log lines) is copied as ``asyncio.to_thread`` does.
    Every exception other than a ``GlimpseError`` becomes a ``GlimpseError`` (500).
    """
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    safe = contained(func)
    call = functools.partial(context.run, safe, *args, **kwargs)
    return await loop.run_in_executor(executor, call)


class BlockingRunner:
    """Runs blocking callables in worker threads, at most ``max_threads`` at a time."""

    def __init__(self, max_threads: int) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self._limiter = anyio.CapacityLimiter(max_threads)

    @property
    def max_threads(self) -> int:
        return int(self._limiter.total_tokens)

    async def run(self, func: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Await ``func(*args, **kwargs)`` in a worker thread.

        Ordinary exceptions propagate for the caller to handle; those an awaiter
        cannot receive intact become a ``GlimpseError`` (see ``contained``).
        On cancellation the caller still waits for the thread to finish: the
        work is bounded by the intake limits, and abandoning it would let the
        real number of busy threads exceed the limit.
        """
        safe = contained(func, convert_all=False)
        return await anyio.to_thread.run_sync(functools.partial(safe, *args, **kwargs), limiter=self._limiter)
