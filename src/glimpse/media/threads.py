"""The one way blocking image work leaves the event loop.

A shared ``CapacityLimiter`` bounds how many decodes run at once, so a burst of
large uploads queues here instead of starving anyio's default thread pool (which
DNS lookups and file I/O also use) or holding dozens of decoded bitmaps at once.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread

__all__ = ["BlockingRunner"]

P = ParamSpec("P")
T = TypeVar("T")


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

        On cancellation the caller still waits for the thread to finish: the
        work is bounded by the intake limits, and abandoning it would let the
        real number of busy threads exceed the limit.
        """
        return await anyio.to_thread.run_sync(functools.partial(func, *args, **kwargs), limiter=self._limiter)
